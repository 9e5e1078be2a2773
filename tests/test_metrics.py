"""TL-ID / TG-ID, PSNR, the dlib face embedder on real frames and the ``metrics`` command."""

import json
import math

import numpy as np
import pytest
import torch

from dva_model.cli.main import main as cli_main
from dva_model.metrics import (DLIB_EMBEDDING_DIM, DLIB_SAME_PERSON_DISTANCE, DlibFaceEmbedder,
                               identity_consistency, psnr)
from media import carphone_video, decoded_frames, single_face_video

CLIP_FRAMES = 6


def _unit(rows):
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


# Three 2-d unit "embeddings" at 0, 30 and 60 degrees (every source cosine is non-zero, so R is defined).
SOURCE = _unit([[1.0, 0.0], [math.cos(math.pi / 6), math.sin(math.pi / 6)], [0.5, math.sqrt(3) / 2]])


def test_identical_embeddings_score_exactly_one():
    scores = identity_consistency(SOURCE, SOURCE.copy())
    assert scores["tl_id"] == 1.0 and scores["tg_id"] == 1.0
    assert scores["frames_used"] == 3 and scores["frames_skipped"] == 0


def test_hand_computed_ratios():
    # Source cosines: (0,1) cos30, (1,2) cos30, (0,2) cos60. The edit freezes the face: every edited
    # frame equals frame 0, so all edited cosines are 1 and R = 1 / S_src.
    edited = np.repeat(SOURCE[:1], 3, axis=0)
    c30, c60 = math.cos(math.pi / 6), 0.5
    scores = identity_consistency(torch.from_numpy(SOURCE), torch.from_numpy(edited))
    assert scores["tl_id"] == pytest.approx((1 / c30 + 1 / c30) / 2, abs=1e-12)
    assert scores["tg_id"] == pytest.approx((2 / c30 + 2 / c30 + 2 / c60) / 6, abs=1e-12)
    assert scores["tl_id"] > 1.0  # frozen variation reads above the ideal


def test_drift_reads_below_one_and_nan_frames_are_skipped():
    # The edit spreads the identities twice as far apart (0, 60, 120 degrees) -> R < 1.
    edited = _unit([[1.0, 0.0], [0.5, math.sqrt(3) / 2], [-0.5, math.sqrt(3) / 2]])
    scores = identity_consistency(SOURCE, edited)
    c30 = math.cos(math.pi / 6)
    assert scores["tl_id"] == pytest.approx(0.5 / c30, abs=1e-12)
    assert scores["tg_id"] == pytest.approx((0.5 / c30 * 4 + (-0.5 / 0.5) * 2) / 6, abs=1e-12)
    # A frame without a face (NaN row) drops out: frames 0 and 2 remain, and they are not adjacent.
    missing = edited.copy()
    missing[1] = np.nan
    skipped = identity_consistency(SOURCE, missing)
    assert skipped["frames_used"] == 2 and skipped["frames_skipped"] == 1
    assert math.isnan(skipped["tl_id"])
    assert skipped["tg_id"] == pytest.approx(-0.5 / 0.5, abs=1e-12)


@pytest.mark.parametrize("source, edited, message", [
    (SOURCE[:1], SOURCE[:1], "at least 2 frames"),
    (SOURCE, SOURCE[:2], "differ in shape"),
    (SOURCE[0], SOURCE[0], "must be [N, D]"),
    (np.full((3, 2), np.nan), SOURCE, "Only 0 of 3 frames"),
])
def test_bad_embeddings_are_one_sentence_errors(source, edited, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        identity_consistency(source, edited)


def test_psnr_matches_the_formula():
    a = torch.zeros(2, 4, 4, 3, dtype=torch.float64)
    b = a + 0.1  # MSE 0.01 in [0, 1] -> 20 dB
    assert psnr(a, b) == pytest.approx(20.0, abs=1e-9)
    assert psnr(a * 255, b * 255, data_range=255.0) == pytest.approx(20.0, abs=1e-9)
    assert psnr(a, a) == math.inf
    with pytest.raises(ValueError, match="Cannot compare shapes"):
        psnr(a, b[:1])


@pytest.fixture(scope="module")
def clip_embeddings():
    frames = (decoded_frames("single_face.mp4", CLIP_FRAMES) * 255).round().to(torch.uint8)
    return DlibFaceEmbedder().embed(frames)


def test_dlib_embeddings_of_one_person_are_unit_and_close(clip_embeddings):
    assert clip_embeddings.shape == (CLIP_FRAMES, DLIB_EMBEDDING_DIM)
    assert not np.isnan(clip_embeddings).any()
    np.testing.assert_allclose(np.linalg.norm(clip_embeddings, axis=1), 1.0, atol=1e-9)
    distances = np.linalg.norm(clip_embeddings[:, None] - clip_embeddings[None], axis=-1)
    assert distances.max() < DLIB_SAME_PERSON_DISTANCE
    cosines = clip_embeddings @ clip_embeddings.T
    assert cosines.min() > 0.9


def test_dlib_embedder_gives_nan_for_a_frame_without_a_face(clip_embeddings):
    blank = np.zeros((1, 120, 160, 3), dtype=np.uint8)
    assert np.isnan(DlibFaceEmbedder().embed(blank)).all()
    with pytest.raises(ValueError, match="uint8"):
        DlibFaceEmbedder().embed(np.zeros((1, 8, 8, 3), dtype=np.float32))


def test_metrics_command_on_a_clip_against_itself(tmp_path, capsys):
    out = tmp_path / "metrics.json"
    video = str(single_face_video())
    code = cli_main(["--quiet", "metrics", "--source", video, "--edited", video,
                     "--max-frames", str(CLIP_FRAMES), "--out", str(out)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["tl_id"] == 1.0 and printed["tg_id"] == 1.0
    assert printed["frames"] == printed["frames_used"] == CLIP_FRAMES
    assert printed["frames_without_face_source"] == printed["frames_without_face_edited"] == 0
    assert printed["mse_uint8"] == 0.0 and printed["psnr_db"] is None  # identical: infinite PSNR


@pytest.mark.parametrize("max_frames, message", [(None, "frames to compare"), ("6", "compare videos of the same size")])
def test_metrics_command_refuses_mismatched_videos(max_frames, message, capsys):
    args = ["metrics", "--source", str(single_face_video()), "--edited", str(carphone_video())]
    if max_frames:
        args += ["--max-frames", max_frames]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0


def test_metrics_command_on_a_really_changed_clip(tmp_path, capsys):
    # A real (if crude) edit: the first 6 frames with the face region brightened, written losslessly.
    from fractions import Fraction

    from dva_model.formats.video import write_video

    frames = decoded_frames("single_face.mp4", CLIP_FRAMES).clone()
    source, edited = tmp_path / "source.mp4", tmp_path / "edited.mp4"
    write_video(source, frames, fps=Fraction(30), lossless=True)
    frames[:, 60:300, 200:440] = (frames[:, 60:300, 200:440] * 1.15).clamp(0, 1)
    write_video(edited, frames, fps=Fraction(30), lossless=True)
    assert cli_main(["--quiet", "metrics", "--source", str(source), "--edited", str(edited)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["frames"] == printed["frames_used"] == CLIP_FRAMES
    assert 15.0 < printed["psnr_db"] < 60.0
    assert printed["tl_id"] != 1.0 and abs(printed["tl_id"] - 1.0) < 0.05
    assert abs(printed["tg_id"] - 1.0) < 0.05
