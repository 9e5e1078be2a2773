"""Several people at the video level: tracking a file, choosing faces, the track preview, scoped CLI edits."""

import argparse

import numpy as np
import pytest
import torch

from media import PAN_FRAMES, RETURN_FRAMES, decoded_frames, dlib_landmarker, media_path, multi_face_pan_video
from dva_model.errors import UserError
from dva_model.face.preview import track_colour
from dva_model.face.recognition import DlibRecogniser
from dva_model.formats.video import FrameSelection, probe, read_frames
from dva_model.people import (
    FaceChoice, choose_faces, pick_people, preview_in_memory, read_reference, track_people_in_memory,
    track_people_in_video, write_track_preview,
)


def test_tracking_a_file_with_a_stride_numbers_frames_in_source_time(tmp_path, monkeypatch):
    import dva_model.people

    settings = []  # the decoding thread's freed frames must go back to the OS, as in the one-face pass
    monkeypatch.setattr(dva_model.people, "limit_heap_growth", lambda: settings.append(True))
    info, indices, people = track_people_in_video(multi_face_pan_video(), dlib_landmarker(),
                                                  selection=FrameSelection(start=1, stride=3))
    assert settings == [True]
    assert list(indices) == list(range(1, PAN_FRAMES, 3)) and len(people) == 4
    assert all(p.track.detected.all() for p in people) and all(p.descriptor is None for p in people)


def test_the_preview_video_has_every_frame_and_each_track_in_its_colour(tmp_path):
    _, _, people = track_people_in_video(multi_face_pan_video(), dlib_landmarker())
    out = write_track_preview(multi_face_pan_video(), tmp_path / "tracks.mp4", people)
    info = probe(out)
    assert (info.frame_count, info.width, info.height) == (PAN_FRAMES, 640, 480)
    frames, _ = read_frames(out, selection=FrameSelection(max_frames=1))
    source = decoded_frames("multi_face_pan.mp4", 1)
    assert (frames[0] - source[0]).abs().amax(-1).gt(0.3).sum() > 1000  # boxes and numbers drawn
    palette = torch.tensor([track_colour(p.track_id) for p in people], dtype=torch.float32)  # [4, 3]
    for person in people:  # each box's top edge is nearest its track's colour (x264 blurs thin lines' colour)
        x0, y0 = np.nanmin(person.track.landmarks[0], axis=0).round().astype(int)
        x1, _ = np.nanmax(person.track.landmarks[0], axis=0).round().astype(int)
        edge = (frames[0, y0, x0 + 4: x1 - 4] * 255).mean(0)  # [3]
        assert int((palette - edge).norm(dim=1).argmin()) == people.index(person)


def test_in_memory_tracking_joins_a_returning_person_and_previews_every_frame():
    frames = decoded_frames("leave_and_return.mp4", RETURN_FRAMES)
    people = track_people_in_memory(frames, dlib_landmarker())
    assert len(people) == 2  # the recogniser joins the person who comes back
    preview = preview_in_memory(frames, people, chunk_size=16)
    assert preview.shape == frames.shape and preview.dtype == torch.float32
    changed = (preview - frames).abs().amax(-1) > 0  # [N, H, W]
    away = ~people[0].track.has_face & ~people[1].track.has_face
    assert changed.flatten(1).any(1).all() and not away.all()


def test_choosing_by_number_and_by_photo_in_paste_order_and_never_twice():
    people = track_people_in_memory(decoded_frames("leave_and_return.mp4", RETURN_FRAMES), dlib_landmarker())
    obama_photo = read_reference(media_path("obama2.jpg"))
    assert obama_photo[0] == "obama2" and obama_photo[1].dtype == np.uint8
    (by_photo,) = pick_people(people, "0", [obama_photo[1]], landmarker=dlib_landmarker())
    assert pick_people(people, "all") == people and pick_people(people, "1,0") == people[::-1]
    other = people[1 - by_photo.track_id]
    chosen = choose_faces(people, FaceChoice(ids=(other.track_id,), references=(obama_photo,)),
                          landmarker=dlib_landmarker(), recogniser=DlibRecogniser())
    assert [(c.label, c.person.track_id) for c in chosen] == [(str(other.track_id), other.track_id),
                                                               ("obama2", by_photo.track_id)]
    with pytest.raises(UserError, match=rf"^Face track {by_photo.track_id} was chosen twice \({by_photo.track_id} and "
                                        r"obama2\); choose each person once\.$"):
        choose_faces(people, FaceChoice(ids=(by_photo.track_id,), references=(obama_photo,)),
                     landmarker=dlib_landmarker(), recogniser=DlibRecogniser())
    assert [c.label for c in choose_faces(people, FaceChoice())] == ["0", "1"]  # nothing chosen: all


def test_an_unreadable_reference_photo_is_one_sentence(tmp_path):
    bad = tmp_path / "alice.jpg"
    bad.write_text("not a photo")
    with pytest.raises(UserError, match=r"^Cannot read the reference photo .*alice.jpg \(.*\); give a JPEG or PNG"):
        read_reference(bad)


def _args(**values):
    defaults = dict(attribute=[], delta=[], classifier=None, latent_stats=None, edit_norm="keep")
    return argparse.Namespace(**{**defaults, **values})


def test_edits_scoped_to_one_face_go_to_that_face_only(tmp_path):
    from dva_model.cli.faces import edits_per_face, split_scope
    from dva_model.edit.clip_edit import save_delta
    from dva_model.edit.identity import IdentityDelta

    assert split_scope("Smiling:1@alice") == ("Smiling:1", "alice")
    assert split_scope("/data/me@home/beard.safetensors:0.5") == ("/data/me@home/beard.safetensors:0.5", None)
    paths = []
    for name, value in (("beard", 1.0), ("glasses", -1.0)):
        paths.append(save_delta(tmp_path / f"{name}.safetensors",
                                IdentityDelta(delta=torch.full((512,), value), source_text="a", target_text=name)))
    edits = edits_per_face(_args(delta=[f"{paths[0]}:0.5", f"{paths[1]}:2@1"]), ["0", "1"])
    assert [scale for _, scale in edits["0"].deltas] == [0.5]
    assert [scale for _, scale in edits["1"].deltas] == [0.5, 2.0]
    assert edits["1"].deltas[1][0][0] == -1.0
    with pytest.raises(UserError, match=r"^Edit for face @bob, which is not a chosen face; the chosen faces are 0 or 1\.$"):
        edits_per_face(_args(delta=[f"{paths[0]}@bob"]), ["0", "1"])
    with pytest.raises(UserError, match="needs --classifier|classifier"):
        edits_per_face(_args(attribute=["Smiling:1@0"]), ["0", "1"])
