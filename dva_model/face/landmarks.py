"""Face detection and 68-point iBUG landmarks: the backends, named in two tables.

One small interface: a ``FaceDetector`` finds boxes in an RGB frame, a ``LandmarkPredictor`` places the
68 iBUG points inside one box, and ``FaceLandmarker`` pairs the two. Real backends:

- dlib: HOG frontal-face detector + ``shape_predictor_68_face_landmarks.dat`` (the published pipeline's
  choice), found in a models folder or in the ``face_recognition_models`` package;
- face-alignment (FAN landmarks, S3FD detector; weights from its own cache under ``$TORCH_HOME``);
- insightface's SCRFD detector (``det_*.onnx`` under ``models/insightface`` as other packs keep it).

Heavy backends are imported inside the class that uses them. Following one face through a clip is
``dva_model.face.tracking``.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional, Protocol, Union

import numpy as np

from dva_model.constants import LANDMARK_POINTS
from dva_model.errors import ModelFileError, NoFaceError, UserError, one_of

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


def load_dlib_model(factory: Callable, path: PathLike, what: str):
    """``factory(path)`` for one of dlib's model files, with one sentence when the file is missing or foreign."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path} does not exist; it should be {what}, check the path.")
    try:
        return factory(str(path))
    except RuntimeError as error:
        raise ModelFileError(f"{path} is not {what} ({error}).") from error


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
        self._predictor = load_dlib_model(dlib.shape_predictor, model_path, "a dlib shape predictor file")
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
        check_face_alignment_weights()
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


def check_face_alignment_weights() -> None:
    """Refuse to build face-alignment's models when their weights are not in its cache, where the package
    would download them unasked: the file names come from the installed package's own URL tables."""
    from urllib.parse import urlparse

    import torch.hub
    from face_alignment.api import models_urls as fan_urls
    from face_alignment.detection.sfd.sfd_detector import models_urls as sfd_urls

    folder = Path(torch.hub.get_dir()) / "checkpoints"
    for url in (fan_urls["2DFAN-4"], sfd_urls["s3fd"]):
        name = Path(urlparse(url).path).name
        if not (folder / name).is_file():
            raise ModelFileError(
                f"face-alignment's weights {name} are not in {folder}; download {url} into that folder "
                f"(or set TORCH_HOME), or choose the dlib backend."
            )


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


@dataclass
class BackendOptions:
    """What the backend factories may need: dlib's 68-point file (``models_dir`` is searched for it), the
    insightface models folder, the device; one face-alignment model is shared by detector and landmarks."""

    models_dir: Optional[PathLike] = None
    insightface_dir: Optional[PathLike] = None
    device: str = "cpu"
    _fan: Optional[FaceAlignmentBackend] = None

    def face_alignment(self) -> FaceAlignmentBackend:
        """The one face-alignment model of this landmarker (built on first use)."""
        if self._fan is None:
            self._fan = FaceAlignmentBackend(device=self.device)
        return self._fan


def _insightface_detector(options: BackendOptions) -> InsightFaceDetector:
    if options.insightface_dir is None:
        raise UserError("The insightface detector needs its models folder (models/insightface).")
    return InsightFaceDetector(options.insightface_dir, device=options.device)


# The backends by name: the CLI's and the nodes' option lists are these keys (first = default).
DETECTORS: dict[str, Callable[[BackendOptions], FaceDetector]] = {
    "dlib": lambda options: DlibDetector(),
    "insightface": _insightface_detector,
    "face_alignment": BackendOptions.face_alignment,
}
LANDMARK_MODELS: dict[str, Callable[[BackendOptions], LandmarkPredictor]] = {
    "dlib": lambda options: DlibLandmarks(find_dlib_landmark_model(options.models_dir)),
    "face_alignment": BackendOptions.face_alignment,
}


def make_landmarker(
    *,
    detector: DetectorName = "dlib",
    landmarks: LandmarkName = "dlib",
    models_dir: Optional[PathLike] = None,
    insightface_dir: Optional[PathLike] = None,
    device: str = "cpu",
) -> FaceLandmarker:
    """Build a ``FaceLandmarker`` from backend names (keys of ``DETECTORS`` and ``LANDMARK_MODELS``).

    ``models_dir`` is searched for dlib's 68-point file; ``insightface_dir`` holds the SCRFD ONNX file.
    """
    if detector not in DETECTORS:
        raise ValueError(f"Unknown face detector {detector!r}; choose {one_of(DETECTORS)}.")
    if landmarks not in LANDMARK_MODELS:
        raise ValueError(f"Unknown landmark backend {landmarks!r}; choose {one_of(LANDMARK_MODELS)}.")
    options = BackendOptions(models_dir=models_dir, insightface_dir=insightface_dir, device=device)
    return FaceLandmarker(detector=DETECTORS[detector](options), predictor=LANDMARK_MODELS[landmarks](options))
