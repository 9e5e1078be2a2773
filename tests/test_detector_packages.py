"""The product card's detector packages for real: insightface's SCRFD and face-alignment's S3FD + FAN.

No real weights exist here, so the tests write stand-ins in each package's own format and folder
(``dva_model.testing``): an ONNX graph with SCRFD's interface under models/insightface, and FAN and S3FD
state dicts in $TORCH_HOME/hub/checkpoints. The packages' own loaders, resizing, colour conversion,
box decoding and NMS then run for real. The stand-in detectors find pure red patches, so each test knows
where the boxes must land: on the red square, never on the blue one (a frame passed in the wrong colour
order would put them there), in frame pixels (through each package's resizing).
"""

import importlib.util

import numpy as np
import pytest

from dva_model.errors import ModelFileError
from dva_model.face.landmarks import make_landmarker
from dva_model.face.tracking import landmarks_of_image, track_faces
from dva_model.testing import write_face_alignment_standins, write_scrfd_standin

RED = (slice(64, 128), slice(48, 112))  # rows, columns of the red square in a 240 x 320 frame
BLUE = (slice(64, 128), slice(200, 264))
BOX_SIDE = 64.0


def _frame(shift: int = 0) -> np.ndarray:
    image = np.zeros((240, 320, 3), dtype=np.uint8)
    image[RED[0], RED[1].start + shift: RED[1].stop + shift] = (255, 0, 0)
    image[BLUE] = (0, 0, 255)
    return image


def _assert_on_red(boxes: np.ndarray, side: float, shift: int = 0, slack: float = 4.0) -> None:
    assert boxes.ndim == 2 and boxes.shape[1] == 5 and len(boxes) >= 1 and boxes.dtype == np.float64
    centres = (boxes[:, :2] + boxes[:, 2:4]) / 2
    assert (centres[:, 0] >= RED[1].start + shift - slack).all() and (centres[:, 0] <= RED[1].stop + shift + slack).all()
    assert (centres[:, 1] >= RED[0].start - slack).all() and (centres[:, 1] <= RED[0].stop + slack).all()
    np.testing.assert_allclose(boxes[:, 2] - boxes[:, 0], side, atol=1.0)
    assert (boxes[:, 4] > 0.9).all()


@pytest.mark.skipif(importlib.util.find_spec("insightface") is None, reason="insightface is not installed")
def test_insightface_scrfd_runs_end_to_end_from_an_onnx_file_in_its_folder(tmp_path):
    folder = tmp_path / "models" / "insightface"
    write_scrfd_standin(folder / "models" / "buffalo_l" / "det_10g.onnx", box_side=BOX_SIDE)
    landmarker = make_landmarker(detector="insightface", landmarks="dlib", insightface_dir=folder)
    # 320 x 240 frames are scaled x2 into the 640 x 640 input: the boxes come back in frame pixels.
    _assert_on_red(landmarker.detector.detect(_frame()), BOX_SIDE / 2)
    track = track_faces([np.stack([_frame(shift) for shift in (0, 4, 8)])], landmarker, source="red square")
    assert track.detected.all() and np.isfinite(track.landmarks).all()
    assert (np.diff(track.boxes[:, 0]) > 0).all()  # follows the square to the right


@pytest.mark.skipif(importlib.util.find_spec("face_alignment") is None, reason="face-alignment is not installed")
def test_face_alignment_s3fd_and_fan_run_end_to_end_from_its_weight_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    write_face_alignment_standins(tmp_path / "torch", box_side=BOX_SIDE)
    landmarker = make_landmarker(detector="face_alignment", landmarks="face_alignment")
    assert landmarker.detector is landmarker.predictor  # one model serves both
    boxes = landmarker.detector.detect(_frame())
    _assert_on_red(boxes, BOX_SIDE, slack=8.0)  # S3FD's stride-4 anchors and max-pooling widen by a few px
    points = landmarks_of_image(_frame(), landmarker)  # S3FD then FAN (random weights) in that box
    box = boxes[np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))]
    centre = (box[:2] + box[2:4]) / 2
    assert points.shape == (68, 2) and np.isfinite(points).all()
    assert (np.abs(points - centre) <= 1.5 * BOX_SIDE).all()  # FAN's points lie in its crop around the box


@pytest.mark.skipif(importlib.util.find_spec("face_alignment") is None, reason="face-alignment is not installed")
def test_face_alignment_without_cached_weights_is_refused_instead_of_downloading(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(ModelFileError, match=r"^face-alignment's weights 2DFAN4-11f355bf06.pth.tar are not in .*"
                                             r"empty/hub/checkpoints; download https://"):
        make_landmarker(detector="face_alignment", landmarks="face_alignment")
    assert not (tmp_path / "empty" / "hub" / "checkpoints").exists() or not any((tmp_path / "empty").rglob("*.pth*"))
