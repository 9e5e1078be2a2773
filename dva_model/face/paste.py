"""Paste edited face crops back into the full-resolution frames through face-parsing masks.

As released (reference section 8): the mask is the BINARY "paste-back" foreground of the ORIGINAL crop
(BiSeNet classes without background, cloth, hat, ears, neck and hair), composited inside the crop, and
the whole crop square is warped back into the frame. Options fix its known weaknesses: class presets
that keep hair, glasses or beard edits, the union with the EDITED crop's mask (so what an edit adds is
kept), dilation, feathering and temporal smoothing of the mask.

Compositing (default ``"frame"``): the edited crop and its mask are warped back at full resolution
and blended there, so every frame pixel outside the mask keeps its exact input value; ``"release"``
blends inside the crop first and pastes the whole square (pixels of the square outside the mask are
then the original resampled twice). Either way pixels outside the warped crop square and frames
without a face are bit-identical to the input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional, Sequence, get_args

import numpy as np
import torch

from dva_model.face.align import warp_to_frames
from dva_model.constants import PARSING_CLASSES, PASTE_MASK_EXCLUDED, TRAINING_MASK_EXCLUDED
from dva_model.errors import one_of
from dva_model.face.runs import consecutive_runs

HAIR, NECK, LEFT_EAR, RIGHT_EAR = (PARSING_CLASSES.index(name) for name in ("hair", "neck", "l_ear", "r_ear"))
ALL_CLASSES = tuple(range(len(PARSING_CLASSES)))
RELEASE_CLASSES = tuple(c for c in ALL_CLASSES if c not in PASTE_MASK_EXCLUDED)

# Classes pasted from the edited crop, per preset (eyeglasses are in every preset; see module docstring).
MASK_PRESETS: dict[str, tuple[int, ...]] = {
    "release": RELEASE_CLASSES,  # face without hair, ears and neck
    "hair": tuple(sorted(RELEASE_CLASSES + (HAIR,))),  # hair colour / style edits
    "glasses": tuple(sorted(RELEASE_CLASSES + (LEFT_EAR, RIGHT_EAR))),  # temples run over the ears
    "beard": tuple(sorted(RELEASE_CLASSES + (NECK,))),  # a beard reaches down the neck
    "head": tuple(c for c in ALL_CLASSES if c not in TRAINING_MASK_EXCLUDED),  # the training foreground
}
MaskPreset = Literal["release", "hair", "glasses", "beard", "head"]
Composite = Literal["frame", "release"]
COMPOSITES: tuple[str, ...] = get_args(Composite)  # first = default
BLUR_TRUNCATE = 3.0  # Gaussian kernel radius in sigmas


@dataclass(frozen=True, kw_only=True)
class PasteConfig:
    """How the paste mask is built and composited; the defaults are the release's behaviour.

    classes: parsing classes taken from the edited crop (see ``MASK_PRESETS``; ``from_preset``).
    union_edited: also take the pixels the EDITED crop's parsing puts in those classes.
    dilate: grow the mask by this many crop pixels (a disc). feather: Gaussian sigma of the mask's
    edge in crop pixels. temporal_sigma: Gaussian smoothing of the mask along time, in frames.
    composite: "frame" (mask warped to the frame, only masked pixels change) or "release".
    """

    classes: tuple[int, ...] = RELEASE_CLASSES
    union_edited: bool = False
    dilate: int = 0
    feather: float = 0.0
    temporal_sigma: float = 0.0
    composite: Composite = "frame"

    def __post_init__(self) -> None:
        bad = [c for c in self.classes if c not in ALL_CLASSES]
        if not self.classes or bad:
            raise ValueError(f"Mask classes must be a non-empty subset of 0..{len(ALL_CLASSES) - 1}, got {self.classes}.")
        if not all(math.isfinite(v) and v >= 0 for v in (self.dilate, self.feather, self.temporal_sigma)):
            raise ValueError("dilate, feather and temporal_sigma must be 0 (off) or positive finite numbers.")
        if self.composite not in COMPOSITES:
            raise ValueError(f"Unknown composite {self.composite!r}; choose {one_of(COMPOSITES)}.")

    @classmethod
    def from_preset(cls, preset: MaskPreset, **options) -> "PasteConfig":
        """A config whose classes are ``MASK_PRESETS[preset]``; other fields from ``options``."""
        if preset not in MASK_PRESETS:
            raise ValueError(f"Unknown mask preset {preset!r}; choose one of {', '.join(MASK_PRESETS)}.")
        return cls(classes=MASK_PRESETS[preset], **options)


def class_mask(labels: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """Binary mask of ``classes``: labels [N, H, W] int64 -> [N, 1, H, W] float32 in {0, 1}."""
    wanted = torch.as_tensor(list(classes), device=labels.device)
    return torch.isin(labels, wanted).unsqueeze(1).float()


def _disc(radius: int, device: torch.device) -> torch.Tensor:
    """[2r+1, 2r+1] float disc structuring element."""
    grid = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    return ((grid[:, None] ** 2 + grid[None, :] ** 2) <= radius**2 + 0.5).float()


def _gaussian_kernel1d(sigma: float, device: torch.device) -> torch.Tensor:
    radius = max(int(math.ceil(BLUR_TRUNCATE * sigma)), 1)
    grid = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (grid / sigma) ** 2)
    return kernel / kernel.sum()


def run_bounds(frame_numbers: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """For each of N frames, the first row and the row after the last of its run of consecutive frame
    numbers ([N] int each): temporal smoothing never reaches across a gap in the numbering."""
    numbers = np.asarray(frame_numbers, dtype=np.int64)
    breaks = np.flatnonzero(np.diff(numbers) != 1) + 1  # first row of every run but the first
    starts = np.concatenate([[0], breaks]).astype(np.int64)
    stops = np.concatenate([breaks, [len(numbers)]]).astype(np.int64)
    run = np.repeat(np.arange(len(starts)), stops - starts)  # [N] run id of each row
    return starts[run], stops[run]


def temporal_radius(sigma: float) -> int:
    """Frames on each side that the temporal smoothing of ``sigma`` reads (0 when off)."""
    return max(int(math.ceil(BLUR_TRUNCATE * sigma)), 1) if sigma > 0 else 0


def smooth_rows(
    window: torch.Tensor, first: int, rows: np.ndarray, run_start: np.ndarray, run_stop: np.ndarray, sigma: float
) -> torch.Tensor:
    """Gaussian smoothing along time of the masks of ``rows`` (edge frames of each run replicated).

    window: [W, 1, H, W'] masks of rows first..first+W-1, which must include every row within
    ``temporal_radius(sigma)`` of ``rows`` inside their runs. rows: [n] row numbers. run_start,
    run_stop: [N] from ``run_bounds`` over all rows. Returns [n, 1, H, W'] float32. Streaming and
    whole-clip smoothing give the same result, so the smoothing does not restart at chunk boundaries.
    """
    kernel = _gaussian_kernel1d(sigma, window.device)
    radius = (len(kernel) - 1) // 2
    rows = np.asarray(rows, dtype=np.int64)
    low, high = run_start[rows], run_stop[rows] - 1
    out = torch.zeros((len(rows),) + tuple(window.shape[1:]), dtype=torch.float32, device=window.device)
    for k, weight in enumerate(kernel):
        source = np.clip(rows + k - radius, low, high) - first  # [n] rows of the window
        out += weight * window[torch.as_tensor(source, device=window.device)].float()
    return out


def smooth_in_time(masks: torch.Tensor, sigma: float, frame_numbers: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Gaussian smoothing of masks [N, 1, H, W] along N (edge frames replicated), within runs of
    consecutive ``frame_numbers`` (default: all N frames are consecutive)."""
    if sigma <= 0 or len(masks) < 2:
        return masks
    numbers = list(range(len(masks))) if frame_numbers is None else list(frame_numbers)
    run_start, run_stop = run_bounds(numbers)
    return smooth_rows(masks, 0, np.arange(len(masks)), run_start, run_stop, sigma)


def spatial_masks(
    source_labels: torch.Tensor,
    edited_labels: Optional[torch.Tensor] = None,
    *,
    config: PasteConfig = PasteConfig(),
) -> torch.Tensor:
    """``build_masks`` without the temporal smoothing (each frame on its own, so chunks can be
    computed separately): labels [N, H, W] int64 -> [N, 1, H, W] float32 in [0, 1]."""
    masks = class_mask(source_labels, config.classes)
    if config.union_edited:
        if edited_labels is None:
            raise ValueError("union_edited needs the edited crops' labels; pass edited_labels.")
        masks = torch.maximum(masks, class_mask(edited_labels, config.classes))
    if config.dilate > 0:
        from kornia.morphology import dilation

        masks = dilation(masks, _disc(config.dilate, masks.device))
    if config.feather > 0:
        from kornia.filters import gaussian_blur2d

        radius = max(int(math.ceil(BLUR_TRUNCATE * config.feather)), 1)
        masks = gaussian_blur2d(masks, 2 * radius + 1, (config.feather, config.feather), border_type="constant")
    return masks.clamp(0.0, 1.0)


def build_masks(
    source_labels: torch.Tensor,
    edited_labels: Optional[torch.Tensor] = None,
    *,
    config: PasteConfig = PasteConfig(),
    frame_numbers: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    """Paste masks from BiSeNet labels: [N, H, W] int64 (source crops, and edited crops when
    ``config.union_edited``) -> [N, 1, H, W] float32 in [0, 1].

    Order: class mask (union) -> dilation (disc) -> feathering (Gaussian) -> temporal smoothing.
    """
    masks = spatial_masks(source_labels, edited_labels, config=config)
    return smooth_in_time(masks, config.temporal_sigma, frame_numbers).clamp(0.0, 1.0)


def paste_back(
    frames: torch.Tensor,
    edited: torch.Tensor,
    masks: torch.Tensor,
    quads: np.ndarray,
    *,
    source: Optional[torch.Tensor] = None,
    has_face: Optional[np.ndarray] = None,
    composite: Composite = "frame",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite edited crops into their frames; also return where they went (the paste alpha).

    frames: [B, H, W, 3] float in [0, 1] (the video layout). edited: [B, 3, S, S] float in [-1, 1].
    masks: [B, 1, S, S] float in [0, 1]. quads: [B, 4, 2] pixel-index quads of the crops.
    source: [B, 3, S, S] original crops in [-1, 1], needed by ``composite="release"``.
    has_face: [B] bool; frames marked False are returned untouched (their crops and quads ignored).
    Returns (frames [B, H, W, 3] in the frames' dtype, alpha [B, H, W] float32 in [0, 1]: the warped
    mask, or for "release" the warped square, 0 on frames without a face); a pixel is changed only
    where alpha is non-zero.
    """
    count, height, width, _ = frames.shape
    if edited.shape[0] != count or masks.shape[0] != count or len(quads) != count:
        raise ValueError(f"paste_back needs one crop, mask and quad per frame ({count} frames).")
    if composite == "release" and source is None:
        raise ValueError("composite='release' needs the original crops (source).")
    keep = np.ones(count, dtype=bool) if has_face is None else np.asarray(has_face, dtype=bool)
    out = frames.clone()
    coverage = torch.zeros(count, height, width, device=frames.device)
    for row in np.flatnonzero(keep):
        unit = (edited[row: row + 1].float() + 1.0) / 2.0  # [1, 3, S, S] in [0, 1]
        mask = masks[row: row + 1].float().to(unit.device)
        if composite == "release":
            original = (source[row: row + 1].float().to(unit.device) + 1.0) / 2.0
            unit = unit * mask + original * (1.0 - mask)  # blend inside the crop as released
            mask = torch.ones_like(mask)  # then the whole square is pasted
        # Only the quad's bounding box can change: warp and blend there, not over the whole frame
        # (a face is a few percent of an HD frame; the full-frame warp cost seconds and 6 frame copies).
        top, bottom, left, right = _quad_window(np.asarray(quads[row]), height, width)
        if top >= bottom or left >= right:
            continue  # the quad lies wholly outside the frame
        # Premultiplied warp: colour*alpha and alpha are both 0 outside the square (zero padding).
        shifted = np.asarray(quads[row], dtype=np.float64)[None] - np.array([left, top], dtype=np.float64)
        warped = warp_to_frames(torch.cat([unit * mask, mask], dim=1), shifted, bottom - top, right - left)[0]
        colour = warped[:3].permute(1, 2, 0).to(frames.device)  # [h, w, 3]
        alpha = warped[3:].permute(1, 2, 0).clamp(0.0, 1.0).to(frames.device)  # [h, w, 1]
        base = frames[row, top:bottom, left:right].float()
        blended = (base * (1.0 - alpha) + colour).clamp(0.0, 1.0)
        out[row, top:bottom, left:right] = torch.where(alpha > 0, blended, base).to(frames.dtype)
        coverage[row, top:bottom, left:right] = alpha[..., 0]
    return out, coverage


def _quad_window(quad: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the frame pixels a crop warped along ``quad`` [4, 2] can touch: its
    bounding box, two pixels wider for the bilinear border, clipped to the frame (may be empty)."""
    margin = 2
    left = max(int(np.floor(quad[:, 0].min())) - margin, 0)
    right = min(int(np.ceil(quad[:, 0].max())) + margin + 1, width)
    top = max(int(np.floor(quad[:, 1].min())) - margin, 0)
    bottom = min(int(np.ceil(quad[:, 1].max())) + margin + 1, height)
    return top, bottom, left, right


def crop_rows(has_face: np.ndarray) -> np.ndarray:
    """Frame position -> row of its crop: has_face [N] bool -> [N] int64 (-1 for frames without a face);
    crops hold one row per frame with a face, in frame order."""
    rows = np.full(len(has_face), -1)
    rows[np.flatnonzero(has_face)] = np.arange(int(np.count_nonzero(has_face)))
    return rows


def paste_frames(
    frames: torch.Tensor,
    positions: np.ndarray,
    rows: np.ndarray,
    edited: torch.Tensor,
    masks: torch.Tensor,
    quads: np.ndarray,
    *,
    crops: Optional[torch.Tensor] = None,
    composite: Composite = "frame",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste the edited crops of a clip into a chunk of its frames (on the frames' device).

    frames: [n, H, W, 3] float in [0, 1], the clip's frames at ``positions`` [n]. rows: [N] crop row of
    every frame of the clip (``crop_rows``). edited, masks, crops: [M, 3|1|3, S, S], one per frame with a
    face (crops are the original crops, read by ``composite="release"``). quads: [N, 4, 2].
    Returns ``paste_back``'s (frames [n, H, W, 3], alpha [n, H, W]).
    """
    chunk_rows = rows[positions]
    face = chunk_rows >= 0
    pick = torch.as_tensor(np.where(face, chunk_rows, 0))
    device = frames.device
    source = crops[pick].to(device) if composite == "release" else None
    return paste_back(frames, edited[pick].to(device), masks[pick].to(device),
                      np.where(face[:, None, None], quads[positions], 0.0), source=source, has_face=face,
                      composite=composite)
