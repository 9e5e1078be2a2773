"""Tracking every face of a clip with stable track ids, and choosing whose face to edit.

Each frame: detect all faces and place 68 landmarks in each, then assign detections to the open tracks
by a minimum-cost matching (scipy's ``linear_sum_assignment``) on

    cost = (1 - IoU(track box, detection box)) + mean landmark distance / track box size,

where a pair may match only if IoU >= ``min_iou`` or the landmark distance <= ``max_landmark_distance``
box sizes. A detection matched to no track opens a new one (a person who enters); a track unseen for
more than ``max_gap`` source frames is closed (a person who left). Afterwards:

1. tracks detected in fewer than ``min_detections`` frames are dropped (detector false positives);
2. with a face recogniser, a closed track and a later track whose mean descriptors are nearer than
   ``SAME_PERSON_DISTANCE`` are joined: a person who leaves and comes back keeps one id (the frames
   away stay flagged "no face", so they are never edited);
3. each track's short gaps are filled exactly as for one face (``tracking.fill_gaps``);
4. tracks are numbered 0, 1, ... in a stated order: largest face first, or left to right.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable, Literal, Optional, Sequence, Union, get_args

import numpy as np
import torch

from dva_model.constants import LANDMARK_POINTS
from dva_model.errors import NoFaceError, UserError, one_of
from dva_model.face.keyframe import box_iou
from dva_model.face.landmarks import BOX_COLUMNS, FaceLandmarker
from dva_model.face.recognition import SAME_PERSON_DISTANCE, DlibRecogniser, descriptor_distance
from dva_model.face.tracking import FaceTrack, as_images, box_size, box_centre, fill_gaps
from dva_model.progress import ProgressCallback, report

log = logging.getLogger(__name__)

FaceOrder = Literal["largest", "left_to_right"]
FACE_ORDERS: tuple[str, ...] = get_args(FaceOrder)  # first = default
ALL_FACES = "all"
DESCRIBE_EVERY = 10  # source frames between two descriptors of one track (~60 ms each on one core)
NO_MATCH = 1e6  # cost of a pair that may not match


@dataclass(frozen=True, kw_only=True)
class MultiTrackConfig:
    """How ``track_people`` follows several faces.

    max_gap: a track survives at most this many source frames without a detection (filled in, as for
        one face); after a longer miss it is closed, and a face there starts (or rejoins) another track.
    min_iou / max_landmark_distance: a detection may continue a track if their boxes overlap at least
        ``min_iou`` or their landmarks are on average within ``max_landmark_distance`` track box sizes.
    min_detections: tracks detected in fewer frames are dropped (capped at the clip's length).
    same_person: descriptor distance below which two non-overlapping tracks are one person.
    """

    max_gap: int = 8
    min_iou: float = 0.3
    max_landmark_distance: float = 0.5
    min_detections: int = 3
    same_person: float = SAME_PERSON_DISTANCE

    def __post_init__(self) -> None:
        if self.max_gap < 0:
            raise ValueError(f"max_gap must be 0 or more frames, got {self.max_gap}.")
        if not 0 < self.min_iou <= 1 or self.max_landmark_distance <= 0:
            raise ValueError("min_iou must be in (0, 1] and max_landmark_distance positive.")
        if self.min_detections < 1 or self.same_person <= 0:
            raise ValueError("min_detections must be at least 1 and same_person positive.")


@dataclass(frozen=True, kw_only=True)
class PersonTrack:
    """One person's face through the clip.

    track_id: its number in the stated order (0 = first). track: the ``FaceTrack`` over all N frames
    (``has_face`` False where the person is absent). descriptor: [128] mean dlib descriptor, or None
    without a recogniser.
    """

    track_id: int
    track: FaceTrack
    descriptor: Optional[np.ndarray] = None


@dataclass
class _Open:
    """A track being built: its detected rows, and what the next frame is matched against."""

    rows: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    landmarks: list[np.ndarray] = field(default_factory=list)
    last_seen: int = 0  # source frame number of the last detection
    described_at: Optional[int] = None
    descriptor_sum: Optional[np.ndarray] = None
    descriptor_count: int = 0

    def add(self, row: int, number: int, box: np.ndarray, points: np.ndarray) -> None:
        self.rows.append(row)
        self.boxes.append(np.asarray(box[:4], dtype=np.float64))
        self.landmarks.append(points)
        self.last_seen = number

    def describe(self, number: int, image: np.ndarray, box: np.ndarray, points: np.ndarray, recogniser) -> None:
        """Add a descriptor every ``DESCRIBE_EVERY`` source frames (a running sum: memory stays flat)."""
        if recogniser is None or (self.described_at is not None and number - self.described_at < DESCRIBE_EVERY):
            return
        descriptor = recogniser.describe(image, box, points)
        self.descriptor_sum = descriptor if self.descriptor_sum is None else self.descriptor_sum + descriptor
        self.descriptor_count += 1
        self.described_at = number

    @property
    def descriptor(self) -> Optional[np.ndarray]:
        return None if self.descriptor_sum is None else self.descriptor_sum / self.descriptor_count

    def absorb(self, later: "_Open") -> None:
        """Append a later, non-overlapping track of the same person."""
        self.rows += later.rows
        self.boxes += later.boxes
        self.landmarks += later.landmarks
        if later.descriptor_sum is not None:
            self.descriptor_sum = later.descriptor_sum + (0 if self.descriptor_sum is None else self.descriptor_sum)
            self.descriptor_count += later.descriptor_count


def match_costs(track_boxes: np.ndarray, track_points: np.ndarray, boxes: np.ndarray, points: np.ndarray,
                config: MultiTrackConfig) -> np.ndarray:
    """Cost [T, D] of continuing each open track with each detection (module docstring); ``NO_MATCH``
    where neither the overlap nor the landmark distance allows it.

    track_boxes: [T, 4]; track_points: [T, 68, 2]; boxes: [D, 4+]; points: [D, 68, 2].
    """
    costs = np.full((len(track_boxes), len(boxes)), NO_MATCH)
    for t, (track_box, track_lm) in enumerate(zip(track_boxes, track_points)):
        size = box_size(track_box)
        for d, (box, lm) in enumerate(zip(boxes, points)):
            iou = box_iou(track_box, box)
            distance = float(np.linalg.norm(lm - track_lm, axis=1).mean()) / size
            if iou >= config.min_iou or distance <= config.max_landmark_distance:
                costs[t, d] = (1.0 - iou) + distance
    return costs


def _assign(open_tracks: list[_Open], boxes: np.ndarray, points: list[np.ndarray],
            config: MultiTrackConfig) -> tuple[dict[int, int], list[int]]:
    """Matches {track index: detection index} and the unmatched detection indices."""
    from scipy.optimize import linear_sum_assignment

    matches: dict[int, int] = {}
    if open_tracks and len(boxes):
        costs = match_costs(np.stack([t.boxes[-1] for t in open_tracks]), np.stack([t.landmarks[-1] for t in open_tracks]),
                            boxes, np.stack(points), config)
        for t, d in zip(*linear_sum_assignment(costs)):
            if costs[t, d] < NO_MATCH:
                matches[int(t)] = int(d)
    taken = set(matches.values())
    return matches, [d for d in range(len(boxes)) if d not in taken]


def _follow(frames: Iterable, landmarker: FaceLandmarker, recogniser, config: MultiTrackConfig,
            frame_numbers: Optional[Sequence[int]], total: Optional[int],
            callback: Optional[ProgressCallback]) -> tuple[list[_Open], int]:
    """The per-frame matching pass: every track ever opened (in opening order) and the frame count."""
    tracks: list[_Open] = []
    open_tracks: list[_Open] = []
    row = 0
    for chunk in frames:
        for image in as_images(chunk):
            number = row if frame_numbers is None else int(frame_numbers[row])
            open_tracks = [t for t in open_tracks if number - t.last_seen - 1 <= config.max_gap]
            boxes = landmarker.detector.detect(image).reshape(-1, BOX_COLUMNS)
            points = [landmarker.predictor.landmarks(image, box) for box in boxes]
            matches, new = _assign(open_tracks, boxes, points, config)
            for t, d in matches.items():
                open_tracks[t].add(row, number, boxes[d], points[d])
                open_tracks[t].describe(number, image, boxes[d], points[d], recogniser)
            for d in new:
                track = _Open()
                track.add(row, number, boxes[d], points[d])
                track.describe(number, image, boxes[d], points[d], recogniser)
                tracks.append(track)
                open_tracks.append(track)
            row += 1
            report(callback, row, total or row)
    return tracks, row


def _join_returning(tracks: list[_Open], same_person: float) -> list[_Open]:
    """Join each track to the nearest-in-identity earlier track that ended before it began (step 2)."""
    chains: list[_Open] = []
    for track in tracks:  # in opening order
        candidates = [
            (descriptor_distance(chain.descriptor, track.descriptor), i) for i, chain in enumerate(chains)
            if chain.rows[-1] < track.rows[0] and chain.descriptor is not None and track.descriptor is not None
        ]
        best = min(candidates, default=None)
        if best is not None and best[0] < same_person:
            chains[best[1]].absorb(track)
        else:
            chains.append(track)
    return chains


def _order_key(track: FaceTrack, order: FaceOrder) -> float:
    boxes = track.boxes[track.detected]
    if order == "largest":
        return -float(np.median([box_size(box) for box in boxes]))
    return float(np.median(box_centre(boxes)[:, 0]))


def _finish(track: _Open, count: int, numbers: np.ndarray, max_gap: int) -> FaceTrack:
    """The ``FaceTrack`` over all ``count`` frames of a built track, short gaps filled (step 3)."""
    landmarks = np.full((count, LANDMARK_POINTS, 2), np.nan)
    boxes = np.full((count, 4), np.nan)
    detected = np.zeros(count, dtype=bool)
    landmarks[track.rows] = np.stack(track.landmarks)
    boxes[track.rows] = np.stack(track.boxes)
    detected[track.rows] = True
    filled, has_face = fill_gaps(landmarks, detected, max_gap, numbers)
    return FaceTrack(landmarks=filled, boxes=boxes, detected=detected, has_face=has_face)


def track_people(
    frames: Iterable[Union[np.ndarray, torch.Tensor]],
    landmarker: FaceLandmarker,
    *,
    recogniser: Optional[DlibRecogniser] = None,
    config: MultiTrackConfig = MultiTrackConfig(),
    order: FaceOrder = "largest",
    total: Optional[int] = None,
    callback: Optional[ProgressCallback] = None,
    source: str = "the video",
    frame_numbers: Optional[Sequence[int]] = None,
) -> list[PersonTrack]:
    """Detect, landmark and track every face of a clip (module docstring); one ``PersonTrack`` per person,
    numbered in ``order``.

    frames: an iterable of frames [H, W, 3] or chunks [n, H, W, 3], RGB uint8 (or float in [0, 1]).
    frame_numbers: source frame number of each frame (ascending; default 0, 1, ...): gaps are measured
    in these. recogniser: joins a person's tracks across long absences and gives each track a
    descriptor (needed to choose a person by photo). Raises ``NoFaceError`` when no frame has a face.
    """
    if order not in FACE_ORDERS:
        raise ValueError(f"Unknown face order {order!r}; choose {one_of(FACE_ORDERS)}.")
    built, count = _follow(frames, landmarker, recogniser, config, frame_numbers, total, callback)
    if count == 0:
        raise UserError(f"No frames were given to find faces in ({source}).")
    minimum = min(config.min_detections, count)
    built = [t for t in built if len(t.rows) >= minimum]
    if not built:
        raise NoFaceError(f"No face was found in the {count} frames of {source}; use a video that shows a face.")
    if recogniser is not None:
        built = _join_returning(built, config.same_person)
    numbers = np.arange(count) if frame_numbers is None else np.asarray(frame_numbers[:count])
    finished = [(_finish(t, count, numbers, config.max_gap), t.descriptor) for t in built]
    finished.sort(key=lambda item: (_order_key(item[0], order), int(np.argmax(item[0].detected))))
    people = [PersonTrack(track_id=i, track=track, descriptor=d) for i, (track, d) in enumerate(finished)]
    log.info("%d face track(s) in %s", len(people), source)
    return people


def parse_face_ids(text: str) -> Optional[tuple[int, ...]]:
    """"all" -> None (every track); "0" or "0,2" -> (0, 2): the track ids a user typed (CLI and node)."""
    text = text.strip().lower()
    if text == ALL_FACES:
        return None
    try:
        ids = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UserError(f"Faces {text!r} must be 'all' or track numbers separated by commas, e.g. 0 or 0,2.") from None
    if any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise UserError(f"Faces {text!r}: track numbers are 0 or more, each given once.")
    return ids


def select_by_ids(people: Sequence[PersonTrack], ids: Optional[Sequence[int]]) -> list[PersonTrack]:
    """The tracks with these ids, in the order given (None: all); refuses an id the clip does not have."""
    if ids is None:
        return list(people)
    missing = [i for i in ids if not 0 <= i < len(people)]
    if missing:
        raise UserError(f"Face track {missing[0]} does not exist: this clip has {len(people)} face track(s), "
                        f"numbered 0-{len(people) - 1}; see the track preview.")
    return [people[i] for i in ids]


def select_by_reference(people: Sequence[PersonTrack], reference: np.ndarray, *,
                        same_person: float = SAME_PERSON_DISTANCE) -> PersonTrack:
    """The track whose descriptor is nearest the reference photo's descriptor [128]; ``UserError``
    when even the nearest is farther than ``same_person`` (the person is not in the clip)."""
    described = [(descriptor_distance(p.descriptor, reference), i) for i, p in enumerate(people) if p.descriptor is not None]
    if not described:
        raise UserError("Choosing a face by reference photo needs the face recogniser while tracking.")
    distance, index = min(described)
    track_id = people[index].track_id
    if distance >= same_person:
        raise UserError(f"The person in the reference photo is not in the video: the nearest face track "
                        f"({track_id}) is at identity distance {distance:.2f}, and the same person is below "
                        f"{same_person}; use another photo of them, or choose the face by number.")
    return people[index]
