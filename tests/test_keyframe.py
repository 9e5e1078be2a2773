"""Detect every k frames, follow the landmarks in between: fewer detections, the same face, re-detection on slips."""

import numpy as np
import pytest
import torch

from media import decoded_frames, dlib_landmarker, dlib_track
from dva_model.face.keyframe import box_iou, keyframe_landmarker, landmark_box
from dva_model.face.landmarks import FaceLandmarker
from dva_model.face.tracking import TrackConfig, track_faces

FRAMES = 16


class CountingDetector:
    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def detect(self, image):
        self.calls += 1
        return self.inner.detect(image)


def _eyes(landmarks: np.ndarray) -> np.ndarray:
    return np.stack([landmarks[:, 36:42].mean(1), landmarks[:, 42:48].mean(1)], axis=1)  # [N, 2, 2]


def test_tracking_between_key_frames_detects_less_and_keeps_the_eyes_in_place():
    full = dlib_track("single_face.mp4", FRAMES)
    real = dlib_landmarker()
    counting = CountingDetector(real.detector)
    tracker = keyframe_landmarker(FaceLandmarker(detector=counting, predictor=real.predictor), every=4)
    frames = (decoded_frames("single_face.mp4", FRAMES) * 255).round().to(torch.uint8).numpy()
    track = track_faces([frames], tracker, source="single_face.mp4")
    assert track.detected.all()
    assert counting.calls <= FRAMES // 4 + 2  # key frames 0, 4, 8, 12 (+ at most a re-detection or two)
    error = np.linalg.norm(_eyes(track.landmarks) - _eyes(full.landmarks), axis=-1)  # [N, 2] px at 640x360
    assert error.mean() < 1.5 and error.max() < 4.0


class Scripted:
    """A detector and predictor with fixed answers: the face jumps 40 px right and down at frame 3."""

    def __init__(self):
        self.frame, self.detections = -1, []
        base = np.stack(np.meshgrid(np.linspace(0, 60, 17), np.linspace(0, 80, 4)), -1).reshape(-1, 2)[:68]
        self.base = base + 100

    def face(self, frame):
        return self.base + (40 if frame >= 3 else 0)

    def detect(self, image):
        self.frame = int(image[0, 0, 0])
        self.detections.append(self.frame)
        box = landmark_box(self.face(self.frame))
        return np.append(box + [-5, -10, 5, 5], 1.0)[None]

    def landmarks(self, image, box):
        frame = int(image[0, 0, 0])
        if box_iou(box, landmark_box(self.face(frame))) > 0.1:
            return self.face(frame)
        return self.face(0) * 3 - 300  # a box without the face: points scattered over it


def test_a_slipped_track_is_detected_again():
    scripted = Scripted()
    tracker = keyframe_landmarker(FaceLandmarker(detector=scripted, predictor=scripted), every=10)
    frames = np.zeros((6, 8, 8, 3), np.uint8) + np.arange(6, dtype=np.uint8)[:, None, None, None]  # pixel = index
    track = track_faces([frames], tracker, config=TrackConfig(max_jump=10.0))
    assert scripted.detections == [0, 3]  # key frame 0, then only where the landmarks slipped
    assert np.allclose(track.landmarks[3:], scripted.face(3)) and np.allclose(track.landmarks[:3], scripted.face(0))


def test_every_must_be_positive():
    with pytest.raises(ValueError, match="every must be at least 1 frame, got 0"):
        keyframe_landmarker(dlib_landmarker(), every=0)
    assert keyframe_landmarker(dlib_landmarker(), every=1) is dlib_landmarker()


def test_cli_detect_every_option_builds_a_tracking_landmarker_for_one_clip_only():
    import argparse

    from dva_model.cli.align import add_face_options, landmarker_from_args
    from dva_model.errors import UserError

    parser = argparse.ArgumentParser()
    add_face_options(parser)
    args = parser.parse_args(["--detect-every", "5"])
    tracker = landmarker_from_args(args)
    assert tracker.detector.state.every == 5
    with pytest.raises(UserError, match="--detect-every works on one video at a time"):
        landmarker_from_args(args, one_clip=False)
