"""Editing chosen people of a real multi-face clip: only their faces change, each in their own way.

A stand-in model (as in test_pipeline.py) makes the edit visible: its decode paints the whole crop white
or black by the sign of the target identity's first component, and its face parsing is a central
ellipse. Each person gets an identity delta along that component (+ or -), so a face painted white was
edited with the + delta and a black one with the - delta. Outputs are lossless, so "unchanged" means
bit-identical to the decoded source frames. One test runs the real tiny checkpoint through the CLI.
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from media import AWAY, decoded_frames, dlib_landmarker, leave_and_return_video, media_path, \
    multi_face_pan_video
from test_pipeline import ReconstructingModel
from dva_model.cli.main import main
from dva_model.constants import ID_DIM
from dva_model.edit.identity import compose_identity_edits, identity_edits
from dva_model.face import align
from dva_model.face.recognition import DlibRecogniser
from dva_model.formats.video import FrameSelection, probe, read_frames
from dva_model.people import FaceChoice, choose_faces, faces_of, read_reference, track_people_in_video
from dva_model.pipeline import EditConfig, FaceEdit, edit_faces
from dva_model.tracks import tracks_of

FRAMES = 6  # of the pan clip: enough for tracks (3 detections) and a temporal run


class PaintingModel(ReconstructingModel):
    """Decode paints the crop white (+1) or black (-1) by the sign of the target identity's component 0."""

    def decode(self, x_T, z_id, z_lnd, *, steps, batch_size=8, callback=None):
        self.decoded_with.append(z_id)
        return torch.full_like(x_T, 1.0 if float(z_id[0]) > 0 else -1.0)


def _direction(sign: float) -> torch.Tensor:
    delta = torch.zeros(ID_DIM)
    delta[0] = sign * 50.0  # dominates the random clip identity's component 0 after the norm is kept
    return delta


def _target(sign: float):
    steps = identity_edits(deltas=((_direction(sign), 1.0),), attributes=(), classifier=None, norm="keep")
    return lambda identity: compose_identity_edits(identity, steps)


def _mask_alpha(faces, height: int, width: int, *, square: bool = False) -> torch.Tensor:
    """Where a person's paste mask (the stand-in's ellipse, or the whole crop ``square``) lands in each
    frame: [N, H, W] in [0, 1]."""
    grid = torch.linspace(-1, 1, 256)
    ellipse = ((grid[None, :] / 0.45) ** 2 + (grid[:, None] / 0.6) ** 2 < 1).float()
    if square:
        ellipse = torch.ones_like(ellipse)
    alpha = torch.zeros(len(faces.indices), height, width)
    rows = faces.face_rows
    if len(rows):
        crops = ellipse.expand(len(rows), 1, 256, 256)
        alpha[rows] = align.warp_to_frames(crops, faces.quads[rows], height, width)[:, 0]
    return alpha


def _near(alpha: torch.Tensor, pixels: int = 2) -> torch.Tensor:
    """alpha > 0 grown by ``pixels`` (bilinear footprints differ by a pixel between warps)."""
    return F.max_pool2d((alpha > 0).float()[:, None], 2 * pixels + 1, stride=1, padding=pixels)[:, 0] > 0


def _core(alpha: torch.Tensor) -> torch.Tensor:
    return alpha > 0.999


def _track(video, count=None):
    selection = FrameSelection(max_frames=count)
    info, indices, people = track_people_in_video(video, dlib_landmarker(), recogniser=DlibRecogniser(),
                                                  selection=selection)
    return info, indices, people, selection


def test_editing_one_person_by_number_changes_only_their_face(tmp_path):
    video = multi_face_pan_video()
    info, indices, people, selection = _track(video, FRAMES)
    chosen = choose_faces(people, FaceChoice(ids=(1,)))
    faces = faces_of(info, indices, [c.person for c in chosen])
    result = edit_faces([FaceEdit(faces[0], _target(+1))], video, tmp_path / "one.mp4", PaintingModel(),
                        config=EditConfig(steps=2, lossless=True), selection=selection)
    assert (result.frames, result.edited, result.untouched) == (FRAMES, FRAMES, ())
    output, _ = read_frames(result.path)
    source = decoded_frames("multi_face_pan.mp4", FRAMES)
    alpha = _mask_alpha(faces[0], info.height, info.width)
    changed = (output != source).any(-1)  # [N, H, W]
    assert changed.any() and not (changed & ~_near(alpha)).any()  # nothing outside the chosen face's mask
    assert output[_core(alpha)].min() == 1.0  # the chosen face is painted (white)
    for other in people:  # everybody else's face is bit-identical
        if other.track_id != 1:
            other_alpha = _mask_alpha(tracks_of(info, indices, other.track), info.height, info.width)
            assert torch.equal(output[_core(other_alpha)], source[_core(other_alpha)])


def test_editing_one_person_by_reference_photo_leaves_the_frames_they_are_away_from_untouched(tmp_path):
    video = leave_and_return_video()
    info, indices, people, selection = _track(video)
    chosen = choose_faces(people, FaceChoice(references=(read_reference(media_path("obama2.jpg")),)),
                          landmarker=dlib_landmarker(), recogniser=DlibRecogniser())
    faces = faces_of(info, indices, [c.person for c in chosen])[0]
    assert chosen[0].label == "obama2" and np.nanmedian(faces.quads[:, :, 0]) < info.width / 2  # the left person
    result = edit_faces([FaceEdit(faces, _target(-1))], video, tmp_path / "ref.mp4", PaintingModel(),
                        config=EditConfig(steps=2, lossless=True), selection=selection)
    output, _ = read_frames(result.path)
    source, _ = read_frames(video)
    away = ~faces.has_face
    assert away[AWAY[0]: AWAY[1]].all() and result.untouched[0][0] <= AWAY[0]
    assert torch.equal(output[torch.as_tensor(away)], source[torch.as_tensor(away)])  # whole frames untouched
    alpha = _mask_alpha(faces, info.height, info.width)
    changed = (output != source).any(-1)
    assert not (changed & ~_near(alpha)).any()
    assert output[_core(alpha)].max() == 0.0  # painted black
    assert torch.equal(output[:, :, info.width // 2:], source[:, :, info.width // 2:])  # the other person's half


def test_two_people_edited_differently_in_one_run(tmp_path):
    video = multi_face_pan_video()
    info, indices, people, selection = _track(video, FRAMES)
    chosen = choose_faces(people, FaceChoice(ids=(0, 2)))
    faces = faces_of(info, indices, [c.person for c in chosen])
    model = PaintingModel()
    result = edit_faces([FaceEdit(faces[0], _target(+1)), FaceEdit(faces[1], _target(-1))], video,
                        tmp_path / "two.mp4", model, config=EditConfig(steps=2, lossless=True), selection=selection)
    output, _ = read_frames(result.path)
    source = decoded_frames("multi_face_pan.mp4", FRAMES)
    first, second = (_mask_alpha(f, info.height, info.width) for f in faces)
    assert output[_core(first)].min() == 1.0 and output[_core(second)].max() == 0.0  # white and black
    changed = (output != source).any(-1)
    assert not (changed & ~(_near(first) | _near(second))).any()  # persons 1 and 3 and the background: untouched
    assert len({round(float(z[0]), 3) for z in model.decoded_with}) == 2  # two target identities


def test_align_and_edit_commands_choose_faces_and_scope_edits(tmp_path, tiny_checkpoint):
    from dva_model.edit.clip_edit import save_delta
    from dva_model.edit.identity import IdentityDelta

    video = multi_face_pan_video()
    assert main(["align", "--video", str(video), "--max-frames", "3", "--faces", "all", "--out", str(tmp_path / "al"),
                 "--preview-tracks", str(tmp_path / "tracks.mp4"), "--quiet"]) == 0
    folders = sorted(p.name for p in (tmp_path / "al").iterdir())
    assert folders == ["face_0", "face_1", "face_2", "face_3"] and probe(tmp_path / "tracks.mp4").frame_count == 3
    sidecar = json.loads((tmp_path / "al" / "face_2" / "alignment.json").read_text())
    assert [f["has_face"] for f in sidecar["frames"]] == [True] * 3
    assert len(list((tmp_path / "al" / "face_2" / "crops").glob("*.png"))) == 3

    deltas = [save_delta(tmp_path / f"{n}.safetensors", IdentityDelta(delta=_direction(s)))
              for n, s in (("plus", 1), ("minus", -1))]
    out = tmp_path / "edited.mp4"
    assert main(["edit", "--checkpoint", str(tiny_checkpoint), "--video", str(video), "--max-frames", "3",
                 "--steps", "2", "--device", "cpu", "--lossless", "--faces", "2,0", "--out", str(out),
                 "--delta", f"{deltas[0]}:0.5@2", "--delta", f"{deltas[1]}:0.5@0", "--quiet"]) == 0
    output, _ = read_frames(out)
    source = decoded_frames("multi_face_pan.mp4", 3)
    info, indices, people, _ = _track(video, 3)
    chosen = choose_faces(people, FaceChoice(ids=(2, 0)))
    # the tiny random model's face parser may mark any part of the crop: compare with the crop squares
    alphas = [_mask_alpha(f, info.height, info.width, square=True)
              for f in faces_of(info, indices, [c.person for c in chosen])]
    changed = (output != source).any(-1)
    assert changed.any() and not (changed & ~(_near(alphas[0]) | _near(alphas[1]))).any()
    assert main(["edit", "--checkpoint", str(tiny_checkpoint), "--video", str(video), "--out", str(out),
                 "--delta", f"{deltas[0]}@1", "--quiet"]) == 2  # a scoped edit without --faces


@pytest.mark.parametrize("options, sentence", [
    (["--face-reference", "multi_face.jpg"], "The person in the reference photo is not in the video: the nearest face track"),
    (["--faces", "7"], "Face track 7 does not exist: this clip has 2 face track(s), numbered 0-1; see the track preview."),
    (["--faces", "0", "--delta", "x.safetensors@5"], "x.safetensors does not exist"),
    (["--faces", "0", "--detect-every", "3"], "--detect-every follows one face; leave it at 1 with --faces"),
    (["--preview-tracks", "tracks.avi"], "must end in .mp4"),
])
def test_face_choices_refused_in_one_sentence_before_the_model_loads(tmp_path, capsys, options, sentence):
    options = [str(media_path(o)) if o.endswith(".jpg") else str(tmp_path / o) if "." in o else o for o in options]
    status = main(["--quiet", "edit", "--checkpoint", str(tmp_path / "never-loaded.ckpt"), "--video",
                   str(leave_and_return_video()), "--out", str(tmp_path / "out.mp4"), *options])
    err = capsys.readouterr().err.strip()
    assert status == 2 and "Traceback" not in err and err.count("\n") == 0 and sentence in err, err
    assert not (tmp_path / "out.mp4").exists()


def test_overlapping_faces_are_pasted_in_the_stated_order_the_last_on_top():
    import types

    from dva_model.face.align import quads_from_axes
    from dva_model.stages import _Chunk, paste_chunk

    def person(centre_x: float):
        quads = quads_from_axes(np.array([[centre_x, 16.0]]), np.array([[8.0, 0.0]]), np.array([[0.0, 8.0]]))
        return types.SimpleNamespace(has_face=np.array([True]), quads=quads)

    frames = torch.full((1, 32, 64, 3), 128, dtype=torch.uint8)
    left, right = person(26.0), person(38.0)  # 16 px squares overlapping over x 30..34
    white = _Chunk(range(0, 1), slice(0, 1), torch.ones(1, 3, 16, 16), None, torch.ones(1, 1, 16, 16))
    black = _Chunk(range(0, 1), slice(0, 1), -torch.ones(1, 3, 16, 16), None, torch.ones(1, 1, 16, 16))
    white_on_top = paste_chunk(frames, [right, left], [black, white], composite="frame", device=torch.device("cpu"))
    black_on_top = paste_chunk(frames, [left, right], [white, black], composite="frame", device=torch.device("cpu"))
    assert white_on_top[0, 16, 32].tolist() == [1.0] * 3 and black_on_top[0, 16, 32].tolist() == [0.0] * 3
    assert white_on_top[0, 16, 20].tolist() == black_on_top[0, 16, 20].tolist() == [1.0] * 3  # left only
    assert torch.equal(white_on_top[0, :, 50:], frames[0, :, 50:].float() / 255)  # outside both: unchanged
