"""Who a face is: dlib's ResNet face recogniser (128-d descriptors) for telling people apart.

``dlib_face_recognition_resnet_model_v1.dat`` ships in the ``face_recognition_models`` package (a
runtime requirement, beside the 68-point landmark file). Two faces whose descriptors are closer than
``SAME_PERSON_DISTANCE`` (Euclidean; dlib's documented threshold, ~99.4% on LFW) are the same person.
The descriptor is computed from any backend's 68 landmarks: dlib aligns its 150 px chip from them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np

from dva_model.errors import NoFaceError
from dva_model.face.landmarks import FaceLandmarker, find_dlib_file, import_dlib, load_dlib_model

PathLike = Union[str, os.PathLike]

DLIB_RECOGNITION_FILE = "dlib_face_recognition_resnet_model_v1.dat"
DESCRIPTOR_DIM = 128
SAME_PERSON_DISTANCE = 0.6


class DlibRecogniser:
    """dlib's face recognition ResNet: one face (its box and 68 landmarks) -> a 128-d descriptor."""

    def __init__(self, model_path: Optional[PathLike] = None, *, models_dir: Optional[PathLike] = None) -> None:
        dlib = import_dlib()
        path = Path(model_path) if model_path is not None else find_dlib_file(DLIB_RECOGNITION_FILE, models_dir)
        self._net = load_dlib_model(dlib.face_recognition_model_v1, path, "dlib's face recognition model")
        self._dlib = dlib

    def describe(self, image: np.ndarray, box: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """image: [H, W, 3] uint8 RGB; box: [4+] (x0, y0, x1, y1, ...); landmarks: [68, 2] pixels
        -> descriptor [128] float64."""
        dlib = self._dlib
        rect = dlib.rectangle(*(int(round(v)) for v in box[:4]))
        points = [dlib.point(int(round(x)), int(round(y))) for x, y in landmarks]
        shape = dlib.full_object_detection(rect, points)
        return np.asarray(self._net.compute_face_descriptor(np.ascontiguousarray(image), shape), dtype=np.float64)


def describe_largest_face(image: np.ndarray, landmarker: FaceLandmarker, recogniser: DlibRecogniser,
                          *, source: str = "the reference photo") -> np.ndarray:
    """Descriptor [128] of the largest face in an RGB uint8 image [H, W, 3]; ``NoFaceError`` if none."""
    from dva_model.face.tracking import choose_face

    box = choose_face(landmarker.detector.detect(image), None, 1.0)
    if box is None:
        raise NoFaceError(f"No face was found in {source}; use a photo that shows the person's face.")
    return recogniser.describe(image, box, landmarker.predictor.landmarks(image, box))


def descriptor_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance of two descriptors [128] (below ``SAME_PERSON_DISTANCE``: same person)."""
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)))
