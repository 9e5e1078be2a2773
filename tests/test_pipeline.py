"""The whole video pipeline (dva_model.pipeline) and the ``align`` / ``edit`` commands, on real clips.

Most tests use a stand-in model whose decode reproduces the crops exactly, so what they check is the
pipeline itself (frames, masks, paste-back, the written video); one test runs the real tiny random
checkpoint through ``python -m dva_model edit``.
"""

from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from media import decoded_frames, dlib_landmarker, single_face_video
from dva_model.face import align
from dva_model.cli.main import main
from dva_model.constants import ID_DIM, LANDMARK_DIM, PARSING_CLASSES
from dva_model.errors import NoFaceError, UserError
from dva_model.formats.image_io import read_crops
from dva_model.face.tracking import TrackConfig
from dva_model.pipeline import EditConfig, align_video, edit_video, load_alignment
from dva_model.formats.video import FrameSelection, probe, read_frames, write_video

SKIN = PARSING_CLASSES.index("skin")


class ReconstructingModel(nn.Module):
    """Stands in for DVAModel: invert/decode return the crops unchanged (or ``paint``), parsing marks a
    central ellipse as skin. Records the identities it was asked to decode with."""

    image_size = 256

    def __init__(self, paint=None):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the model a device
        self.paint, self.decoded_with = paint, []

    def encode_features(self, crops, *, batch_size=8, callback=None):
        z_id = nn.functional.normalize(torch.randn(len(crops), ID_DIM, generator=torch.Generator().manual_seed(0)), dim=1)
        return z_id, torch.full((len(crops), LANDMARK_DIM), 0.5)

    def invert(self, crops, z_id, z_lnd, *, steps, batch_size=8, callback=None):
        assert z_id.shape == (ID_DIM,)  # the clip's mean identity, as published
        for step in range(steps - 1):
            callback and callback(step + 1, steps - 1)
        return crops.clone()

    def decode(self, x_T, z_id, z_lnd, *, steps, batch_size=8, callback=None):
        self.decoded_with.append(z_id)
        return x_T.clone() if self.paint is None else torch.full_like(x_T, self.paint)

    def parse(self, crops, *, batch_size=8, callback=None):
        callback and callback(1, 1)
        grid = torch.linspace(-1, 1, 256)
        ellipse = (grid[None, :] / 0.45) ** 2 + (grid[:, None] / 0.6) ** 2 < 1
        return (ellipse.long() * SKIN).expand(len(crops), 256, 256).clone()


def square_alpha(video, count, **track):
    """Paste alpha [N, H, W] of the crop square of each of the first ``count`` frames."""
    clip = align_video(video, dlib_landmarker(), selection=FrameSelection(max_frames=count), track=TrackConfig(**track))
    info, rows = probe(video), clip.face_rows
    alpha = torch.zeros(len(clip.indices), info.height, info.width)
    alpha[rows] = align.warp_to_frames(torch.ones(len(rows), 1, 256, 256), clip.quads[rows], info.height, info.width)[:, 0]
    return alpha


def test_align_video_crops_every_frame_of_a_real_clip():
    clip = align_video(single_face_video(), dlib_landmarker(), selection=FrameSelection(start=2, stride=2, max_frames=6))
    assert list(clip.indices) == [2, 4, 6, 8, 10, 12]
    assert clip.has_face.all() and clip.crops.shape == (6, 3, 256, 256)
    assert clip.quads.shape == (6, 4, 2) and not np.isnan(clip.quads).any()


def test_reconstruction_leaves_the_video_unchanged_outside_the_face(tmp_path):
    stages = []
    model = ReconstructingModel()
    result = edit_video(single_face_video(), tmp_path / "out.mp4", model, dlib_landmarker(),
                        config=EditConfig(steps=3, lossless=True), selection=FrameSelection(max_frames=8),
                        stage_progress=lambda stage: stages.append(stage))
    assert (result.frames, result.edited, result.untouched) == (8, 8, ())
    assert stages == ["faces", "encode", "invert", "decode", "paste"]
    info = probe(result.path)
    assert (info.frame_count, info.width, info.height, info.fps, info.has_audio) == (8, 640, 360, Fraction(30), True)
    output, _ = read_frames(result.path)
    source = decoded_frames("single_face.mp4", 8)
    face = square_alpha(single_face_video(), 8) > 0
    assert torch.equal(output[~face], source[~face])
    inside = output[face] - source[face]
    assert 10 * torch.log10(1 / (inside**2).mean()) > 35.0  # unedited crops paste back almost invisibly
    assert torch.equal(model.decoded_with[0], model.decoded_with[-1])  # no edit: the clip identity


def test_frames_without_a_face_are_copied_untouched(tmp_path):
    frames = decoded_frames("single_face.mp4", 12).clone()
    frames[5:9] = 0.5  # four frames where the face is gone
    video = write_video(tmp_path / "gap.mp4", frames, fps=Fraction(30), lossless=True)
    frames, _ = read_frames(video)
    result = edit_video(video, tmp_path / "out.mp4", ReconstructingModel(paint=-1.0), dlib_landmarker(),
                        config=EditConfig(steps=2, lossless=True), track=TrackConfig(max_gap=2))
    assert result.untouched == ((5, 8),) and result.edited == 8
    output, _ = read_frames(result.path)
    assert torch.equal(output[5:9], frames[5:9])
    square = square_alpha(video, 12, max_gap=2)
    centre = square[:, 150:210, 290:350] > 0.999  # around the nose: inside the ellipse "parsing"
    assert centre[[0, 4, 9, 11]].all() and not (square[5:9] > 0).any()
    assert output[:, 150:210, 290:350][centre].max() < 0.05  # the "edit" (a black face) is pasted
    assert torch.equal(output[square == 0], frames[square == 0])


def test_attribute_edit_without_a_classifier_is_refused_before_any_work(tmp_path):
    with pytest.raises(UserError, match="classifier"):
        edit_video(single_face_video(), tmp_path / "out.mp4", ReconstructingModel(), dlib_landmarker(),
                   config=EditConfig(steps=2, edits=(("Mustache", 0.25),)))
    with pytest.raises(UserError, match="overwrite"):
        edit_video(single_face_video(), single_face_video(), ReconstructingModel(), dlib_landmarker())
    assert list(tmp_path.iterdir()) == []


def test_align_command_writes_crops_and_a_sidecar(tmp_path, capsys):
    out = tmp_path / "aligned"
    assert main(["--quiet", "align", "--video", str(single_face_video()), "--out", str(out), "--max-frames", "6"]) == 0
    names, crops = read_crops(out / "crops", size=256)
    assert names == [f"{i:06d}" for i in range(6)]
    sidecar = load_alignment(out / "alignment.json")
    frames = sidecar["frames"]
    assert [f["frame"] for f in frames] == list(range(6)) and all(f["has_face"] and f["detected"] for f in frames)
    quads = np.array([f["quad"] for f in frames])
    assert np.allclose([f["inverse_coefficients"] for f in frames], align.inverse_coefficients(quads))
    assert (sidecar["width"], sidecar["height"], sidecar["fps"], sidecar["crop_size"]) == (640, 360, "30", 256)
    direct = align.align_frames(decoded_frames("single_face.mp4", 6), quads)
    assert (crops - direct).abs().max() <= 1.01 / 127.5  # the PNGs are the crops, rounded


def faceless_video(folder):
    rng = np.random.default_rng(0)
    frames = torch.from_numpy(rng.uniform(0.3, 0.7, size=(6, 96, 128, 3)).astype(np.float32))
    return write_video(folder / "wall.mp4", frames, fps=Fraction(25))


@pytest.mark.parametrize("case", ["corrupt", "empty", "no face"])
def test_bad_inputs_give_one_sentence_and_no_output(tmp_path, capsys, case):
    if case == "corrupt":
        video = tmp_path / "broken.mp4"
        video.write_bytes(single_face_video().read_bytes()[:50_000])
    elif case == "empty":
        video = tmp_path / "empty.mp4"
        video.touch()
    else:
        video = faceless_video(tmp_path)
    before = set(tmp_path.iterdir())
    out = tmp_path / "out.mp4"
    status = main(["--quiet", "edit", "--checkpoint", str(tmp_path / "never-loaded.ckpt"), "--video", str(video),
                   "--out", str(out), "--steps", "2", "--device", "cpu"])
    message = capsys.readouterr().err.strip()
    assert status == 2
    assert message.startswith("error: ") and message.count("\n") == 0 and str(video) in message, message
    assert set(tmp_path.iterdir()) == before  # nothing written, not even a temporary file
    status = main(["--quiet", "align", "--video", str(video), "--out", str(tmp_path / "aligned")])
    assert status == 2 and not (tmp_path / "aligned").exists()
    if case == "no face":
        with pytest.raises(NoFaceError):
            align_video(video, dlib_landmarker())


def test_edit_command_with_a_tiny_random_checkpoint_writes_the_edited_video(tmp_path, tiny_checkpoint):
    out = tmp_path / "edited.mp4"
    status = main(["--quiet", "edit", "--checkpoint", str(tiny_checkpoint), "--video", str(single_face_video()),
                   "--out", str(out), "--max-frames", "2", "--steps", "2", "--device", "cpu", "--lossless",
                   "--mask", "head", "--dilate", "2", "--feather", "1.5"])
    assert status == 0
    info = probe(out)
    assert (info.frame_count, info.width, info.height, info.fps, info.has_audio) == (2, 640, 360, Fraction(30), True)
    output, _ = read_frames(out)
    source = decoded_frames("single_face.mp4", 2)
    outside = square_alpha(single_face_video(), 2) == 0
    assert torch.equal(output[outside], source[outside])
    assert [p.name for p in tmp_path.iterdir()] == ["edited.mp4"]
