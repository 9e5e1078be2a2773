"""Face detection, landmarks and tracking (dva_model.face.landmarks): dlib's real models on real clips,
and the tracking rules on scripted detections."""

import importlib.util
import typing

import numpy as np
import pytest

from media import decoded_frames, dlib_landmarker, dlib_track
from dva_model.face import landmarks as lm
from dva_model.face import tracking
from dva_model.errors import ModelFileError, NoFaceError, UserError


def test_dlib_68_point_model_is_found_in_face_recognition_models():
    path = lm.find_dlib_landmark_model()
    assert path.name == lm.DLIB_LANDMARK_FILE and path.stat().st_size > 90_000_000


def test_missing_dlib_model_names_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(lm, "package_dir", lambda name: None)
    with pytest.raises(ModelFileError, match="face_recognition_models"):
        lm.find_dlib_landmark_model(tmp_path)
    nested = tmp_path / "dva" / lm.DLIB_LANDMARK_FILE
    nested.parent.mkdir()
    nested.write_bytes(b"x")
    assert lm.find_dlib_landmark_model(tmp_path) == nested


def test_face_and_68_landmarks_found_in_every_frame_of_a_talking_head():
    track = dlib_track("single_face.mp4", 16)
    assert track.detected.all() and track.has_face.all()
    assert track.landmarks.shape == (16, 68, 2)
    boxes = track.boxes
    inside = ((track.landmarks[..., 0] >= boxes[:, None, 0] - 20) & (track.landmarks[..., 0] <= boxes[:, None, 2] + 20)
              & (track.landmarks[..., 1] >= boxes[:, None, 1] - 20) & (track.landmarks[..., 1] <= boxes[:, None, 3] + 20))
    assert inside.mean() > 0.95
    eyes_left, eyes_right = track.landmarks[:, 36:42].mean(1), track.landmarks[:, 42:48].mean(1)
    assert (eyes_left[:, 0] < eyes_right[:, 0]).all()  # image-left eye first, as iBUG orders them
    assert np.abs(np.diff(track.landmarks, axis=0)).mean() < 3.0  # a steady talking head


def test_small_face_is_found_by_upsampling_and_short_misses_are_filled():
    track = dlib_track("carphone_pristine.mp4", 40)  # a ~45 px face in a 176x144 clip
    assert track.has_face.all()
    assert track.detected.mean() > 0.9


def test_largest_face_starts_the_track_then_the_nearest_follows():
    small, large = np.array([10, 10, 30, 30, 1.0]), np.array([100, 100, 180, 180, 1.0])
    assert np.array_equal(tracking.choose_face(np.stack([small, large]), None, 1.0), large)
    previous = np.array([12, 12, 32, 32, 1.0])
    assert np.array_equal(tracking.choose_face(np.stack([small, large]), previous, 1.0), small)
    assert tracking.choose_face(np.stack([large]), previous, 1.0) is None  # another face far away
    assert tracking.choose_face(np.zeros((0, 5)), previous, 1.0) is None


def test_fill_gaps_interpolates_short_gaps_holds_ends_and_flags_long_gaps():
    count = 20
    truth = np.arange(count, dtype=float)[:, None, None] * np.ones((count, 68, 2))
    detected = np.ones(count, dtype=bool)
    detected[[0, 5, 6]] = False  # short gaps: start, middle
    detected[10:16] = False  # a long gap
    filled, has_face = tracking.fill_gaps(np.where(detected[:, None, None], truth, np.nan), detected, max_gap=3)
    assert np.allclose(filled[5:7], truth[5:7])  # linear motion is recovered exactly
    assert np.allclose(filled[0], truth[1])  # held at the clip's start
    assert not has_face[10:16].any() and np.isnan(filled[10:16]).all()
    assert has_face[:10].all() and has_face[16:].all()


class ScriptedDetector:
    """Detections scripted per frame (frames are only counted)."""

    def __init__(self, script):
        self.script, self.calls = script, 0

    def detect(self, image):
        boxes = self.script[self.calls]
        self.calls += 1
        return np.asarray(boxes, dtype=float).reshape(-1, 5)


class BoxLandmarks:
    """68 points spread over the box, so the box can be read back from the landmarks."""

    def landmarks(self, image, box):
        t = np.linspace(0, 1, 68)[:, None]
        return np.asarray(box[:2]) + t * (np.asarray(box[2:4]) - np.asarray(box[:2]))


def run_script(script, **config):
    frames = np.zeros((len(script), 4, 4, 3), np.uint8)
    landmarker = lm.FaceLandmarker(detector=ScriptedDetector(script), predictor=BoxLandmarks())
    return tracking.track_faces([frames], landmarker, config=tracking.TrackConfig(**config))


def test_tracking_follows_one_face_not_the_first_or_largest_detection_of_each_frame():
    a = lambda shift: [100 + shift, 100, 200 + shift, 200, 0.9]  # the person we follow, drifting right
    b = [400, 100, 560, 260, 1.0]  # someone else, larger from frame 2 on
    script = [[a(0)], [a(5)], [b, a(10)], [b, a(15)], [b], [b, a(25)]]
    track = run_script(script, max_gap=2)
    assert track.detected.tolist() == [True, True, True, True, False, True]
    assert np.allclose(track.landmarks[:, 0, 0], [100, 105, 110, 115, 120, 125])  # frame 4 interpolated


def test_after_a_long_gap_the_track_restarts_on_the_largest_face():
    a, b = [0, 0, 50, 50, 1.0], [300, 300, 400, 400, 1.0]
    track = run_script([[a], [], [], [], [b, a]], max_gap=1)
    assert track.has_face.tolist() == [True, False, False, False, True]
    assert track.landmarks[4, 0, 0] == 300
    assert track.missing_runs() == [(1, 3)]


def test_no_face_anywhere_is_a_clear_error():
    with pytest.raises(NoFaceError, match="No face was found in any of the 3 frames"):
        run_script([[], [], []])


def test_real_detector_finds_no_face_in_a_faceless_frame():
    frames = decoded_frames("single_face.mp4", 1)
    sky = np.full((1, 360, 640, 3), 180, np.uint8)
    with pytest.raises(NoFaceError):
        tracking.track_faces([sky], dlib_landmarker(), source="sky")
    image = (frames[0].numpy() * 255).round().astype(np.uint8)
    assert tracking.landmarks_of_image(image, dlib_landmarker()).shape == (68, 2)


@pytest.mark.skipif(importlib.util.find_spec("face_alignment") is not None, reason="face-alignment is installed")
def test_missing_face_alignment_package_says_what_to_install():
    with pytest.raises(UserError, match="pip install face-alignment"):
        lm.make_landmarker(landmarks="face_alignment")


@pytest.mark.skipif(importlib.util.find_spec("insightface") is not None, reason="insightface is installed")
def test_missing_insightface_package_says_what_to_install(tmp_path):
    with pytest.raises(UserError, match="pip install insightface"):
        lm.make_landmarker(detector="insightface", insightface_dir=tmp_path)


def test_unknown_backend_names_are_refused():
    with pytest.raises(ValueError, match="dlib, insightface or face_alignment"):
        lm.make_landmarker(detector="haar")


def test_backend_tables_are_the_names_every_interface_offers(comfy_host):
    import argparse

    from dva_model.cli.align import add_face_options
    from dva_model.face.align import ALIGN_METHODS, AlignMethod
    from nodes.align import DVAFaceAlign

    assert tuple(lm.DETECTORS) == typing.get_args(lm.DetectorName)
    assert tuple(lm.LANDMARK_MODELS) == typing.get_args(lm.LandmarkName)
    assert ALIGN_METHODS == typing.get_args(AlignMethod)
    node = DVAFaceAlign.INPUT_TYPES()["required"]
    parser = argparse.ArgumentParser()
    add_face_options(parser)
    cli = {action.dest: action for action in parser._actions}
    for option, table in [("detector", lm.DETECTORS), ("landmarks", lm.LANDMARK_MODELS)]:
        assert node[option][0] == list(table) and tuple(cli[option].choices) == tuple(table)
        assert node[option][1]["default"] == cli[option].default == "dlib"  # the published backend
    assert node["method"][0] == list(ALIGN_METHODS) == list(cli["align_method"].choices)
