"""The several-people nodes as ComfyUI calls them (fake host): Face Tracks with its numbered preview, Pick Face
by number, 'all' and by reference photos, on real multi-face frames; they offer the CLI's choices. Pick Face
gives ComfyUI lists (one entry per person); Paste Back takes them whole and pastes every person in order."""

import numpy as np
import pytest
import torch

from comfy_fakes import pack_nodes
from media import RETURN_FRAMES, decoded_frames, media_path


def _tracks(comfy_host, name, count, order="largest"):
    node = pack_nodes()["DVAFaceTracks"]
    return node.execute("dlib", "dlib", order, 8, frames=decoded_frames(name, count))


def _pick(tracks, face, frames, **options):
    options = {"crop_size": 256, "sigma_centre": 1.0, "sigma_axes": 3.0, "method": "direct", **options}
    return pack_nodes()["DVAPickFace"].execute(tracks, face, frames=frames, **options)


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
    photo = torch.from_numpy(np.array(Image.open(media_path("biden.jpg")).convert("RGB"))).float()[None] / 255
    (by_photo,), (crops,) = _pick(tracks, "0", frames, reference=photo)
    biden = min(tracks, key=lambda p: -np.nanmedian(p.track.boxes[:, 0]))  # the right-hand person
    (by_number,), _ = _pick(tracks, str(biden.track_id), frames)
    assert np.array_equal(by_photo.quads, by_number.quads, equal_nan=True)
    assert by_photo.has_face.all() and crops.shape == (RETURN_FRAMES, 256, 256, 3)
    obama = tracks[1 - biden.track_id]
    (picked,), _ = _pick(tracks, obama.track_id, frames)  # an API prompt of the last release sends a number
    assert not picked.has_face[20:36].any() and picked.has_face[:10].all()  # away: flagged, left untouched
    with pytest.raises(ValueError, match=r"^Face track 5 does not exist: this clip has 2 face track\(s\)"):
        _pick(tracks, "5", frames)


def test_pick_face_all_and_several_give_one_list_entry_per_person_in_order(comfy_host):
    frames = decoded_frames("multi_face_pan.mp4", 4)
    tracks, _ = _tracks(comfy_host, "multi_face_pan.mp4", 4)
    every, crops = _pick(tracks, "all", frames)
    assert len(every) == len(crops) == 4 and all(c.shape == (4, 256, 256, 3) for c in crops)
    quads = [faces.quads for faces in every]
    assert all(not np.array_equal(quads[i], quads[j]) for i in range(4) for j in range(i))  # four people
    two, _ = _pick(tracks, " 2,0 ", frames)
    assert [np.array_equal(f.quads, quads[k]) for f, k in zip(two, (2, 0))] == [True, True], "in the order typed"
    node = pack_nodes()["DVAPickFace"]
    assert node.validate_inputs(face="all") is node.validate_inputs(face="0,2") is node.validate_inputs() is True
    assert node.validate_inputs(face="first") == (
        "Faces 'first' must be 'all' or track numbers separated by commas, e.g. 0 or 0,2.")
    assert node.validate_inputs(face="1,1") == "Faces '1,1': track numbers are 0 or more, each given once."
    outputs = node.define_schema().outputs
    assert [o.is_output_list for o in outputs] == [True, True]


def test_pick_face_takes_one_person_per_reference_photo(comfy_host):
    from PIL import Image

    frames = decoded_frames("leave_and_return.mp4", RETURN_FRAMES)
    tracks, _ = _tracks(comfy_host, "leave_and_return.mp4", RETURN_FRAMES)

    def photo(name):
        canvas = Image.new("RGB", (1000, 2240))  # one batch, one size: each whole photo on a black canvas
        canvas.paste(Image.open(media_path(name)).convert("RGB"))
        return torch.from_numpy(np.array(canvas)).float() / 255

    both, _ = _pick(tracks, "0", frames, reference=torch.stack([photo("biden.jpg"), photo("obama2.jpg")]))
    biden = min(tracks, key=lambda p: -np.nanmedian(p.track.boxes[:, 0]))
    by_number, _ = _pick(tracks, f"{biden.track_id},{1 - biden.track_id}", frames)
    assert all(np.array_equal(a.quads, b.quads, equal_nan=True) for a, b in zip(both, by_number, strict=True))
    assert [bool(f.has_face[20:36].any()) for f in both] == [True, False], "Biden stays, Obama leaves"
    with pytest.raises(ValueError, match=r"^Face track \d was chosen twice \(#1 and #2\)"):
        _pick(tracks, "0", frames, reference=torch.stack([photo("biden.jpg"), photo("biden.jpg")]))


def test_face_tracks_takes_dlibs_recogniser_from_models_dva_first(comfy_host):
    from dva_model.errors import ModelFileError
    from dva_model.face.landmarks import find_dlib_file
    from dva_model.face.recognition import DLIB_RECOGNITION_FILE

    foreign = comfy_host.models / "dva" / DLIB_RECOGNITION_FILE
    foreign.write_bytes(b"not a dlib model")
    with pytest.raises(ModelFileError, match=rf"^{foreign} is not dlib's face recognition model \("):
        _tracks(comfy_host, "multi_face_pan.mp4", 2)
    foreign.unlink()
    foreign.symlink_to(find_dlib_file(DLIB_RECOGNITION_FILE))  # the real file, put there by the user
    tracks, _ = _tracks(comfy_host, "multi_face_pan.mp4", 2)
    assert len(tracks) == 4


def test_the_nodes_offer_the_cli_choices(comfy_host):
    from dva_model.face.multitrack import FACE_ORDERS

    tracks_inputs = {i.id: i for i in pack_nodes()["DVAFaceTracks"].define_schema().inputs}
    pick_inputs = {i.id: i for i in pack_nodes()["DVAPickFace"].define_schema().inputs}
    assert list(tracks_inputs["face_order"].options["options"]) == list(FACE_ORDERS)  # --face-order
    assert "max_gap" in tracks_inputs and tracks_inputs["video"].optional  # --max-gap; a file, as the CLI reads
    assert pick_inputs["face"].io_type == "STRING" and pick_inputs["reference"].optional  # --faces, --face-reference


def test_the_two_people_workflow_runs_end_to_end_and_touches_only_the_two_faces(comfy_host, tiny_checkpoint):
    from comfy_fakes import install
    from media import multi_face_pan_video
    from test_workflows import run_in_process, shipped_prompt

    prompt = shipped_prompt("multi_face_edit.json", comfy_host, tiny_checkpoint)
    install(multi_face_pan_video(), comfy_host.input, prompt["2"]["inputs"]["video"])
    prompt["2"]["inputs"].update(frame_cap=3)
    for encode in ("7", "8"):
        prompt[encode]["inputs"]["steps"] = 2

    results = run_in_process(prompt)

    frames = results["2"][0]
    tracks, preview = results["3"]
    (first,), (second,) = results["5"][0], results["6"][0]  # Pick Face gives lists
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

    # The same two people as one list (what Pick Face "0,1" gives): one Paste Back, the same frames.
    paste = prompt["16"]["inputs"]
    settings = {name: [value] for name, value in paste.items() if not isinstance(value, list)}
    together, mask, _ = pack_nodes()["DVAPasteBack"].execute(
        frames=[frames], faces=[first, second], crops=[results["14"][0], results["15"][0]], model=[results["1"][0]],
        fps=[results["2"][1]], **settings)
    assert torch.equal(together, twice) and torch.equal(mask, torch.maximum(first_mask, second_mask))


def test_every_face_workflow_streams_all_people_of_a_video_into_one_video(comfy_host, tiny_checkpoint,
                                                                         monkeypatch):
    """example_workflows/every_face_edit.json: core Load Video -> Face Tracks (a VIDEO) -> Pick Face 'all' ->
    Encode, Identity Average, Attribute Edit once per person (ComfyUI's list mapping) -> Decode + Paste to
    Video with every person, in track order, each decoded with their own edited identity -> core Save Video.
    (That the render pastes each person inside their own mask only is shown in test_multiface_edit.py.)"""
    from fractions import Fraction

    import dva_model.stages
    from dva_model.formats.latent_io import StoredLatent
    from dva_model.formats.video import probe, write_video
    from test_workflows import run_in_process, shipped_prompt

    prompt = shipped_prompt("every_face_edit.json", comfy_host, tiny_checkpoint)
    write_video(comfy_host.input / prompt["2"]["inputs"]["file"], decoded_frames("multi_face_pan.mp4", 3),
                fps=Fraction(30))
    prompt["4"]["inputs"]["steps"] = 2
    rendered = []
    render = dva_model.stages.render_people

    def seen(path, out_path, people, *args, **kwargs):  # records what the node hands the library's render
        rendered.append([(p.faces, p.file.path, p.target) for p in people])
        return render(path, out_path, people, *args, **kwargs)

    monkeypatch.setattr(dva_model.stages, "render_people", seen)

    results = run_in_process(prompt)

    tracks, preview = results["3"]
    assert len(tracks.people) == 4 and preview.shape == (3, 480, 640, 3)
    people, crops = results["13"]
    assert len(people) == 4 and not any(hasattr(faces, "crops") for faces in people)
    assert [c.shape for c in crops] == [(3, 256, 256, 3)] * 4
    latents, identities = results["4"].lists[0], results["7"].lists[0]  # Encode and the edit ran per person
    assert len(latents) == len(identities) == 4 and all(isinstance(x, StoredLatent) for x in latents)
    (job,) = rendered
    assert [faces for faces, _, _ in job] == people, "every person, in Pick Face's order"
    assert [str(path) for _, path, _ in job] == [str(x.path) for x in latents], "each with their own encoding"
    assert all(torch.equal(target, identity.edited()) for (_, _, target), identity in zip(job, identities))
    assert len({tuple(target[:4].tolist()) for _, _, target in job}) == 4, "four different identities"
    (video,) = results["8"]
    written = probe(video.get_stream_source())
    assert (written.frame_count, written.width, written.height) == (3, 640, 480)
    (saved,) = results["11"].ui["images"]
    assert probe(comfy_host.output / saved["subfolder"] / saved["filename"]).frame_count == 3
