"""Tracking one face through the frames of a clip with a ``FaceLandmarker`` (``dva_model.face.landmarks``).

``track_faces`` follows ONE face: the largest at the start, then the detection nearest the previous box;
short gaps are interpolated, longer gaps are flagged so paste-back leaves those frames untouched, and a
clip with no face is an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import torch

from dva_model.constants import LANDMARK_POINTS
from dva_model.errors import NoFaceError, UserError
from dva_model.face.landmarks import FaceLandmarker
from dva_model.face.runs import true_runs
from dva_model.formats.image_io import to_uint8
from dva_model.progress import ProgressCallback, report

log = logging.getLogger(__name__)

@dataclass(frozen=True, kw_only=True)
class TrackConfig:
    """How ``track_faces`` follows one face.

    max_gap: gaps of at most this many SOURCE frames without a detection are filled in (interpolated
        between detections, held at the clip's ends); longer gaps are flagged "no face". With a stride,
        a gap counts every source frame between the detections on either side, not the selected ones,
        so a face that has left is never held over seconds of video.
    max_jump: a detection whose centre is farther than ``max_jump`` x the previous box's size from the
        previous centre is another face and is ignored (the tracked face counts as missing there).
    """

    max_gap: int = 8
    max_jump: float = 1.0

    def __post_init__(self) -> None:
        if self.max_gap < 0:
            raise ValueError(f"max_gap must be 0 or more frames, got {self.max_gap}.")
        if self.max_jump <= 0:
            raise ValueError(f"max_jump must be positive, got {self.max_jump}.")


@dataclass(frozen=True, kw_only=True)
class FaceTrack:
    """One face through N frames.

    landmarks: [N, 68, 2] float64 (x, y) pixels; NaN where ``has_face`` is False.
    boxes: [N, 4] float64 detection boxes (x0, y0, x1, y1); NaN where ``detected`` is False.
    detected: [N] bool, the face was detected in that frame.
    has_face: [N] bool, detected or filled in from neighbouring frames (short gap).
    """

    landmarks: np.ndarray
    boxes: np.ndarray
    detected: np.ndarray
    has_face: np.ndarray

    def missing_runs(self) -> list[tuple[int, int]]:
        """Runs ``(first, last)`` (inclusive) of frames without a face (``has_face`` False)."""
        return [(run.start, run.stop - 1) for run in true_runs(~self.has_face)]


def box_size(box: np.ndarray) -> float:
    """Geometric mean side of a box [4+] (x0, y0, x1, y1, ...), at least 1 pixel."""
    return float(np.sqrt(max(box[2] - box[0], 1.0) * max(box[3] - box[1], 1.0)))


def box_centre(boxes: np.ndarray) -> np.ndarray:
    """Centres [..., 2] of boxes [..., 4+]."""
    return (boxes[..., :2] + boxes[..., 2:4]) / 2


def choose_face(boxes: np.ndarray, previous: Optional[np.ndarray], max_jump: float) -> Optional[np.ndarray]:
    """Pick the tracked face among ``boxes`` [K, 5]: the largest when there is no ``previous`` box,
    else the one nearest ``previous`` (None if it jumped farther than ``max_jump`` box sizes)."""
    if len(boxes) == 0:
        return None
    if previous is None:
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        return boxes[int(np.argmax(areas))]
    distances = np.linalg.norm(box_centre(boxes) - box_centre(previous), axis=1)
    nearest = int(np.argmin(distances))
    if distances[nearest] > max_jump * box_size(previous):
        return None
    return boxes[nearest]


def as_images(chunk: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
    """A frame [H, W, 3] or chunk [n, H, W, 3] (uint8, or float in [0, 1]) -> uint8 [n, H, W, 3]."""
    chunk = to_uint8(chunk)
    return chunk[None] if chunk.ndim == 3 else chunk


def gap_length(frame_numbers: np.ndarray, first: int, last: int) -> int:
    """Source frames without a detected face around the undetected rows ``first..last`` (inclusive).

    frame_numbers: [N] int, the source frame number of each row (ascending). Between two detections it
    is every source frame strictly between them; at a clip end, the rows' span up to the detection.
    With consecutive frames this is ``last - first + 1``.
    """
    count = len(frame_numbers)
    if 0 < first and last + 1 < count:
        return int(frame_numbers[last + 1] - frame_numbers[first - 1] - 1)
    if first > 0:
        return int(frame_numbers[last] - frame_numbers[first - 1])
    if last + 1 < count:
        return int(frame_numbers[last + 1] - frame_numbers[first])
    return int(frame_numbers[last] - frame_numbers[first] + 1)


def fill_gaps(
    landmarks: np.ndarray, detected: np.ndarray, max_gap: int, frame_numbers: Optional[np.ndarray] = None
) -> tuple[np.ndarray, np.ndarray]:
    """Fill gaps of at most ``max_gap`` source frames without a detection: linear interpolation (in
    source time) between the detections on both sides, or the nearest detection at the clip's ends.
    Returns ``(landmarks, has_face)``.

    landmarks: [N, 68, 2] float64, rows where ``detected`` is False are ignored. frame_numbers: [N] int
    source frame numbers of the rows (default 0..N-1); gaps are measured with ``gap_length``.
    """
    count = len(detected)
    numbers = np.arange(count) if frame_numbers is None else np.asarray(frame_numbers)
    filled = landmarks.copy()
    has_face = detected.copy()
    for run in true_runs(~detected):
        first, last = run.start, run.stop - 1
        if gap_length(numbers, first, last) > max_gap:
            filled[first: last + 1] = np.nan
            continue
        before, after = first - 1, last + 1
        if before < 0 and after >= count:
            continue  # nothing detected anywhere
        if before < 0:
            filled[first: last + 1] = landmarks[after]
        elif after >= count:
            filled[first: last + 1] = landmarks[before]
        else:
            span = numbers[first: last + 1] - numbers[before]
            weights = span / (numbers[after] - numbers[before])  # [gap]
            filled[first: last + 1] = (1 - weights)[:, None, None] * landmarks[before] + weights[:, None, None] * landmarks[after]
        has_face[first: last + 1] = True
    return filled, has_face


def track_faces(
    frames: Iterable[Union[np.ndarray, torch.Tensor]],
    landmarker: FaceLandmarker,
    *,
    config: TrackConfig = TrackConfig(),
    total: Optional[int] = None,
    callback: Optional[ProgressCallback] = None,
    source: str = "the video",
    frame_numbers: Optional[Sequence[int]] = None,
) -> FaceTrack:
    """Detect, track and landmark one face through a clip.

    frames: an iterable of frames [H, W, 3] or chunks [n, H, W, 3], RGB uint8 (or float in [0, 1]).
    frame_numbers: the source frame number of each frame (ascending; default 0, 1, ...), e.g. the
    selected indices of a strided selection: gaps are measured and reported in these numbers.
    The largest face of the first frame with a face starts the track; each later frame takes the
    detection nearest the previous box; after a flagged gap (longer than ``config.max_gap`` source
    frames) the largest face starts a new track. Raises ``NoFaceError`` when no frame has a face.
    """
    rows_landmarks, rows_boxes, detected = [], [], []
    previous: Optional[np.ndarray] = None
    last_seen = 0  # source frame number of the last detection
    for chunk in frames:
        for image in as_images(chunk):
            number = len(detected) if frame_numbers is None else int(frame_numbers[len(detected)])
            if previous is not None and number - last_seen - 1 > config.max_gap:
                previous = None  # the track was lost: start again from the largest face
            box = choose_face(landmarker.detector.detect(image), previous, config.max_jump)
            if box is None:
                rows_landmarks.append(np.full((LANDMARK_POINTS, 2), np.nan))
                rows_boxes.append(np.full(4, np.nan))
            else:
                rows_landmarks.append(landmarker.predictor.landmarks(image, box))
                rows_boxes.append(np.asarray(box[:4], dtype=np.float64))
                previous, last_seen = box, number
            detected.append(box is not None)
            report(callback, len(detected), total or len(detected))
    if not detected:
        raise UserError(f"No frames were given to find faces in ({source}).")
    detected_flags = np.asarray(detected)
    if not detected_flags.any():
        raise NoFaceError(
            f"No face was found in any of the {len(detected)} frames of {source}; use a video that shows a face."
        )
    numbers = np.arange(len(detected)) if frame_numbers is None else np.asarray(frame_numbers[: len(detected)])
    landmarks, has_face = fill_gaps(np.stack(rows_landmarks), detected_flags, config.max_gap, numbers)
    track = FaceTrack(landmarks=landmarks, boxes=np.stack(rows_boxes), detected=detected_flags, has_face=has_face)
    for first, last in track.missing_runs():
        log.warning("No face in frames %d-%d of %s; those frames are left untouched.",
                    numbers[first], numbers[last], source)
    return track


def landmarks_of_image(image: np.ndarray, landmarker: FaceLandmarker) -> np.ndarray:
    """68 landmarks [68, 2] of the largest face in one RGB uint8 image [H, W, 3]; ``NoFaceError`` if none."""
    box = choose_face(landmarker.detector.detect(image), None, 1.0)
    if box is None:
        raise NoFaceError("No face was found in the image; use an image that shows a face.")
    return landmarker.predictor.landmarks(image, box)

