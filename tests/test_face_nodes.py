"""The several-people nodes as ComfyUI calls them (fake host): Face Tracks with its numbered preview, Pick Face
by number and by reference photo, on real multi-face frames; they offer the CLI's choices."""

import numpy as np
import pytest
import torch

from comfy_fakes import pack_nodes
from media import RETURN_FRAMES, decoded_frames, media_path


def _tracks(comfy_host, name, count, order="largest"):
    node = pack_nodes()["DVAFaceTracks"]
    return node.execute(decoded_frames(name, count), "dlib", "dlib", order, 8)


def test_face_tracks_numbers_every_person_and_previews_them(comfy_host):
    frames = decoded_frames("multi_face_pan.mp4", 6)
    tracks, preview = _tracks(comfy_host, "multi_face_pan.mp4", 6)
    assert len(tracks) == 4 and [p.track_id for p in tracks] == [0, 1, 2, 3]
    assert preview.shape == frames.shape and not torch.equal(preview, frames)
    assert comfy_host.bars and comfy_host.bars[-1][0] == 6  # the tracking pass moved a progress bar
    left, _ = _tracks(comfy_host, "multi_face_pan.mp4", 6, order="left_to_right")
    xs = [float(np.median(p.track.boxes[:, 0])) for p in left]
    assert xs == sorted(xs)


def test_pick_face_by_number_and_by_reference_photo(comfy_host):
    from PIL import Image

    frames = decoded_frames("leave_and_return.mp4", RETURN_FRAMES)
    tracks, _ = _tracks(comfy_host, "leave_and_return.mp4", RETURN_FRAMES)
    node = pack_nodes()["DVAPickFace"]
    photo = torch.from_numpy(np.array(Image.open(media_path("biden.jpg")).convert("RGB"))).float()[None] / 255
    by_photo, crops = node.execute(frames, tracks, 0, 256, 1.0, 3.0, "direct", reference=photo)
    biden = min(tracks, key=lambda p: -np.nanmedian(p.track.boxes[:, 0]))  # the right-hand person
    by_number, _ = node.execute(frames, tracks, biden.track_id, 256, 1.0, 3.0, "direct")
    assert np.array_equal(by_photo.quads, by_number.quads, equal_nan=True)
    assert by_photo.has_face.all() and crops.shape == (RETURN_FRAMES, 256, 256, 3)
    obama = tracks[1 - biden.track_id]
    picked, _ = node.execute(frames, tracks, obama.track_id, 256, 1.0, 3.0, "direct")
    assert not picked.has_face[20:36].any() and picked.has_face[:10].all()  # away: flagged, left untouched
    with pytest.raises(ValueError, match=r"^Face track 5 does not exist: this clip has 2 face track\(s\)"):
        node.execute(frames, tracks, 5, 256, 1.0, 3.0, "direct")


def test_the_nodes_offer_the_cli_choices(comfy_host):
    from dva_model.face.multitrack import FACE_ORDERS

    tracks_inputs = {i.id: i for i in pack_nodes()["DVAFaceTracks"].define_schema().inputs}
    pick_inputs = {i.id: i for i in pack_nodes()["DVAPickFace"].define_schema().inputs}
    assert list(tracks_inputs["face_order"].options["options"]) == list(FACE_ORDERS)  # --face-order
    assert "max_gap" in tracks_inputs  # --max-gap
    assert pick_inputs["face"].io_type == "INT" and pick_inputs["reference"].optional  # --faces N, --face-reference


def test_the_two_people_workflow_runs_end_to_end_and_touches_only_the_two_faces(comfy_host, tiny_checkpoint):
    import json

    from comfy_fakes import install
    from media import multi_face_pan_video
    from test_workflows import WORKFLOWS, _release_classifier, run_in_process

    prompt = json.loads((WORKFLOWS / "api" / "multi_face_edit.json").read_text())
    dva = comfy_host.models / "dva"
    install(tiny_checkpoint, dva, prompt["1"]["inputs"]["checkpoint"])
    _release_classifier(dva / prompt["11"]["inputs"]["classifier"])
    install(multi_face_pan_video(), comfy_host.input, prompt["2"]["inputs"]["video"])
    prompt["2"]["inputs"].update(frame_cap=3)
    for encode in ("7", "8"):
        prompt[encode]["inputs"]["steps"] = 2

    results = run_in_process(prompt)

    frames = results["2"][0]
    tracks, preview = results["3"]
    first, second = results["5"][0], results["6"][0]
    once, first_mask, _ = results["16"]
    twice, second_mask, video = results["17"]
    assert len(tracks) == 4 and preview.shape == frames.shape == (3, 480, 640, 3)
    assert not np.array_equal(first.quads, second.quads)
    outside = (first_mask == 0) & (second_mask == 0)
    assert torch.equal(twice[outside], frames[outside]), "only the two picked faces' masks may change"
    changed = (twice - frames).abs().amax(-1) > 1e-3
    assert changed[first_mask > 0.5].any() and changed[second_mask > 0.5].any(), "both faces are edited"
    assert torch.equal(twice[second_mask == 0], once[second_mask == 0]), "the second paste only adds the second face"
    assert video.get_components().images is twice
