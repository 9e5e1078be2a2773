"""Detect a face every k frames and follow it in between from the previous frame's landmarks.

Face detection (dlib's HOG: ~0.2 s a 360p frame on one core) costs far more than placing landmarks in
a known box (~2 ms). Between key frames the box given to the landmark predictor is predicted from the
previous frame's 68 points: the box the detector returned at the last key frame, expressed relative to
that frame's landmark bounding box (offset and scale), applied to the previous landmarks' bounding box.
So the predictor sees boxes shaped like the detector's, which is what it was trained on.

Tracking degrades when the face moves fast, turns or is occluded. After each tracked frame the new
landmarks' bounding box is compared with the previous one; when they overlap less than
``min_overlap`` (IoU) the frame is detected afresh and its landmarks placed again, and the next frames
track from there. A detector that finds nothing ends tracking until the next detection.

``keyframe_landmarker(landmarker, every=k)`` returns a ``FaceLandmarker`` that ``track_faces`` uses
unchanged. It keeps state between frames, so build a new one for each clip.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from dva_model.face.landmarks import FaceLandmarker
from dva_model.face.tracking import choose_face

log = logging.getLogger(__name__)

DEFAULT_MIN_OVERLAP = 0.5  # IoU of consecutive landmark boxes below which a tracked frame is re-detected
TRACKED_SCORE = 1.0  # score of a predicted box (the detector's scores are not comparable anyway)


def landmark_box(points: np.ndarray) -> np.ndarray:
    """Bounding box [4] (x0, y0, x1, y1) of landmarks [68, 2]."""
    return np.concatenate([points.min(axis=0), points.max(axis=0)])


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boxes [4+] (x0, y0, x1, y1, ...)."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(width, 0.0) * max(height, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _relative(box: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``box`` [4] in units of ``reference`` [4]: (x0, y0, x1, y1) relative to its origin and size."""
    size = np.maximum(reference[2:4] - reference[:2], 1.0)
    return (box[:4] - np.tile(reference[:2], 2)) / np.tile(size, 2)


def _absolute(relative: np.ndarray, reference: np.ndarray) -> np.ndarray:
    size = np.maximum(reference[2:4] - reference[:2], 1.0)
    return relative * np.tile(size, 2) + np.tile(reference[:2], 2)


@dataclass
class _TrackState:
    """What the detector half and the predictor half of the wrapper share between frames."""

    every: int
    min_overlap: float
    frame: int = -1
    box_in_landmarks: Optional[np.ndarray] = None  # last detection box relative to its landmark box
    previous: Optional[np.ndarray] = None  # previous frame's landmarks [68, 2]
    tracked: bool = False  # this frame's box was predicted, not detected
    landmarked: bool = True  # the predictor ran on the last frame (False: no face was chosen there)
    counts: dict = field(default_factory=lambda: {"detected": 0, "tracked": 0, "redetected": 0})


class _KeyframeDetector:
    def __init__(self, inner, state: _TrackState):
        self.inner, self.state = inner, state

    def detect(self, image: np.ndarray) -> np.ndarray:
        """image: [H, W, 3] uint8 RGB -> boxes [K, 5]: detected on key frames, else the predicted box."""
        state = self.state
        if not state.landmarked:
            state.previous = None  # the last frame had no face: nothing to track from
        state.frame += 1
        state.landmarked = False
        key = state.frame % state.every == 0
        if key or state.previous is None or state.box_in_landmarks is None:
            state.tracked = False
            state.counts["detected"] += 1
            return self.inner.detect(image)
        state.tracked = True
        state.counts["tracked"] += 1
        box = _absolute(state.box_in_landmarks, landmark_box(state.previous))
        return np.append(box, TRACKED_SCORE)[None]  # [1, 5]


class _KeyframePredictor:
    def __init__(self, inner, detector, state: _TrackState):
        self.inner, self.detector, self.state = inner, detector, state

    def landmarks(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """image: [H, W, 3] uint8 RGB, box [4+] -> [68, 2]; re-detects this frame when tracking slipped."""
        state = self.state
        state.landmarked = True
        points = self.inner.landmarks(image, box)
        if state.tracked and box_iou(landmark_box(points), landmark_box(state.previous)) < state.min_overlap:
            state.counts["redetected"] += 1
            fresh = choose_face(self.detector.detect(image), np.append(box[:4], 0.0), max_jump=1.0)
            if fresh is None:
                state.previous = state.box_in_landmarks = None  # lost: detect again on the next frame
                return points  # the best this frame has; the next frame starts over from a detection
            box, points = fresh, self.inner.landmarks(image, fresh)
            state.tracked = False
        if not state.tracked:
            state.box_in_landmarks = _relative(np.asarray(box[:4], dtype=np.float64), landmark_box(points))
        state.previous = points
        return points


def keyframe_landmarker(
    landmarker: FaceLandmarker, *, every: int, min_overlap: float = DEFAULT_MIN_OVERLAP
) -> FaceLandmarker:
    """``landmarker`` detecting only every ``every``-th frame and tracking in between (module docstring).

    ``every`` = 1 returns ``landmarker`` itself. The result holds per-clip state: one per clip.
    """
    if every < 1:
        raise ValueError(f"every must be at least 1 frame, got {every}.")
    if not 0 < min_overlap <= 1:
        raise ValueError(f"min_overlap must be in (0, 1], got {min_overlap}.")
    if every == 1:
        return landmarker
    state = _TrackState(every=every, min_overlap=min_overlap)
    detector = _KeyframeDetector(landmarker.detector, state)
    predictor = _KeyframePredictor(landmarker.predictor, landmarker.detector, state)
    return FaceLandmarker(detector=detector, predictor=predictor)

