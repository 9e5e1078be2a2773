"""FFHQ-style face alignment for video: quads from landmarks, temporal smoothing, the warp and its inverse.

Coordinates. Landmarks and quads are in frame PIXEL-INDEX coordinates (pixel (i, j) has its centre at
x = i, y = j), as dlib reports them. The release adds 0.5 to the quad before warping, i.e. it works in
CONTINUOUS coordinates, where pixel i covers [i, i + 1] and the crop square is [0, S] x [0, S]. The
crop homography ``H`` below maps frame continuous coordinates to crop continuous coordinates, exactly
the release's 8 "inverse transform" coefficients (PIL ``PERSPECTIVE`` data for pasting a crop back).

Quad corners, as in the release: [c - x - y, c - x + y, c + x + y, c + x - y], going to the crop's
corners (0, 0), (0, S), (S, S), (S, 0): top-left, bottom-left, bottom-right, top-right.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Literal, Optional, get_args

import numpy as np
import torch

from dva_model.constants import CROP_SIZE
from dva_model.errors import one_of
from dva_model.face.runs import true_runs
from dva_model.formats.image_io import to_uint8

# FFHQ quad recipe (Karras et al. 2019; STIT's video version).
EYE_LEFT = slice(36, 42)
EYE_RIGHT = slice(42, 48)
MOUTH_LEFT, MOUTH_RIGHT = 48, 54
EYE_TO_EYE_SCALE = 2.0
EYE_TO_MOUTH_SCALE = 1.8
CENTRE_SHIFT = 0.1  # c = eye_avg + 0.1 * eye_to_mouth
SIGMA_CENTRE = 1.0  # frames, Gaussian smoothing of c
SIGMA_AXES = 3.0  # frames, Gaussian smoothing of x and y

# The release's crop route: warp to 1024, save as JPEG (quality 75), reload and resize to 256.
RELEASE_WARP_SIZE = 1024
RELEASE_JPEG_QUALITY = 75
RELEASE_BORDER_FRACTION = 0.1
RELEASE_MIN_BORDER = 3

# Bilinear sampling acts like a triangle filter of sigma 1/sqrt(6) source pixels; antialiasing blurs
# first so that the total matches a triangle filter as wide as the downscale factor s.
TRIANGLE_SIGMA = 1.0 / math.sqrt(6.0)
BLUR_TRUNCATE = 3.0  # kernel radius in sigmas

AlignMethod = Literal["direct", "release"]
ALIGN_METHODS: tuple[str, ...] = get_args(AlignMethod)  # first = default


@dataclass(frozen=True, kw_only=True)
class AlignConfig:
    """How frames become aligned crops.

    size: crop side S in pixels. sigma_centre / sigma_axes: temporal Gaussian sigmas in frames for the
    quad centre c and the half-axes x, y (0 disables). antialias: blur before a downscaling warp.
    method: "direct" (one antialiased warp to S, on the frames' device) or "release" (the release's
    1024 warp + JPEG-75 + resize, CPU/PIL, for exact fidelity with the published crops).
    """

    size: int = CROP_SIZE
    sigma_centre: float = SIGMA_CENTRE
    sigma_axes: float = SIGMA_AXES
    antialias: bool = True
    method: AlignMethod = "direct"

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ValueError(f"Crop size must be at least 8 pixels, got {self.size}.")
        if self.sigma_centre < 0 or self.sigma_axes < 0:
            raise ValueError("Smoothing sigmas must be 0 (off) or positive.")
        if self.method not in ALIGN_METHODS:
            raise ValueError(f"Unknown align method {self.method!r}; choose {one_of(ALIGN_METHODS)}.")


def quad_axes(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The FFHQ recipe: centre c and half-axes x, y of the crop square from 68 iBUG landmarks.

    landmarks: [N, 68, 2] float (x, y) pixel indices -> c, x, y: each [N, 2] float64.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    eye_left = lm[:, EYE_LEFT].mean(axis=1)
    eye_right = lm[:, EYE_RIGHT].mean(axis=1)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[:, MOUTH_LEFT] + lm[:, MOUTH_RIGHT]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    # x: the eye line, tilted by the eye-to-mouth direction turned by 90 degrees.
    x = eye_to_eye - eye_to_mouth[:, ::-1] * np.array([-1.0, 1.0])
    x /= np.hypot(x[:, 0], x[:, 1])[:, None]
    half_side = np.maximum(
        np.hypot(eye_to_eye[:, 0], eye_to_eye[:, 1]) * EYE_TO_EYE_SCALE,
        np.hypot(eye_to_mouth[:, 0], eye_to_mouth[:, 1]) * EYE_TO_MOUTH_SCALE,
    )
    x *= half_side[:, None]
    y = x[:, ::-1] * np.array([-1.0, 1.0])
    c = eye_avg + eye_to_mouth * CENTRE_SHIFT
    return c, x, y


def smooth_axes(
    c: np.ndarray, x: np.ndarray, y: np.ndarray, valid: Optional[np.ndarray] = None, *,
    sigma_centre: float = SIGMA_CENTRE, sigma_axes: float = SIGMA_AXES,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian temporal smoothing of c, x, y ([N, 2] each), as scipy's gaussian_filter1d (reflect,
    truncate 4) along frames. With ``valid`` [N] bool, each run of valid frames is smoothed on its own
    (a face lost for a while may come back elsewhere); invalid rows come back as NaN."""
    from scipy.ndimage import gaussian_filter1d

    valid = np.ones(len(c), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    out = [np.full_like(v, np.nan, dtype=np.float64) for v in (c, x, y)]
    for part in true_runs(valid):
        for source, target, sigma in ((c, out[0], sigma_centre), (x, out[1], sigma_axes), (y, out[2], sigma_axes)):
            values = np.asarray(source[part], dtype=np.float64)
            target[part] = gaussian_filter1d(values, sigma=sigma, axis=0) if sigma > 0 else values
    return out[0], out[1], out[2]


def quads_from_axes(c: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[N, 2] c, x, y -> quads [N, 4, 2]: (c-x-y, c-x+y, c+x+y, c+x-y)."""
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y], axis=1)


def compute_quads(
    landmarks: np.ndarray, has_face: Optional[np.ndarray] = None, *, config: AlignConfig = AlignConfig()
) -> np.ndarray:
    """Smoothed FFHQ quads for a clip: landmarks [N, 68, 2] -> quads [N, 4, 2] float64 pixel indices.

    Frames where ``has_face`` [N] is False (or whose landmarks are NaN) get NaN quads.
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    valid = ~np.isnan(landmarks).any(axis=(1, 2))
    if has_face is not None:
        valid &= np.asarray(has_face, dtype=bool)
    c, x, y = (np.full((len(landmarks), 2), np.nan) for _ in range(3))
    if valid.any():
        c[valid], x[valid], y[valid] = quad_axes(landmarks[valid])
    c, x, y = smooth_axes(c, x, y, valid, sigma_centre=config.sigma_centre, sigma_axes=config.sigma_axes)
    return quads_from_axes(c, x, y)


def crop_corners(size: int = CROP_SIZE) -> np.ndarray:
    """The crop square's corners [4, 2] in continuous coordinates, in quad order."""
    return np.array([[0, 0], [0, size], [size, size], [size, 0]], dtype=np.float64)


def perspective_coefficients(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 8 coefficients (a..h) of the homography sending 4 points ``source`` [4, 2] to ``target`` [4, 2]:
    u = (a x + b y + c) / (g x + h y + 1), v = (d x + e y + f) / (g x + h y + 1) (PIL's PERSPECTIVE data)."""
    rows, rhs = [], []
    for (px, py), (qx, qy) in zip(np.asarray(source, np.float64), np.asarray(target, np.float64)):
        rows.append([px, py, 1, 0, 0, 0, -qx * px, -qx * py])
        rows.append([0, 0, 0, px, py, 1, -qy * px, -qy * py])
        rhs.extend([qx, qy])
    return np.linalg.solve(np.array(rows), np.array(rhs))


def inverse_coefficients(quads: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """The release's per-frame "inverse transforms": [N, 8] coefficients mapping frame continuous
    coordinates to crop continuous coordinates, from (quad + 0.5) to the crop corners."""
    corners = crop_corners(size)
    return np.stack([perspective_coefficients(quad + 0.5, corners) for quad in np.asarray(quads, np.float64)])


def crop_homographies(quads: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """[N, 4, 2] quads -> [N, 3, 3] float64 homographies, frame INDEX coords -> crop INDEX coords."""
    coefficients = inverse_coefficients(quads, size)
    homographies = np.concatenate([coefficients, np.ones((len(coefficients), 1))], axis=1).reshape(-1, 3, 3)
    to_continuous = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    to_index = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])
    return to_index @ homographies @ to_continuous


def quad_scale(quads: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """Source pixels per crop pixel for each quad [N, 4, 2] -> [N] (>1 means the warp downscales)."""
    side = np.linalg.norm(quads[:, 3] - quads[:, 0], axis=-1)  # top edge: (c+x-y) - (c-x-y) = 2x
    return side / size


def _translation(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def warp_to_crops(
    frames: torch.Tensor, quads: np.ndarray, *, size: int = CROP_SIZE, antialias: bool = True
) -> torch.Tensor:
    """Batched perspective warp of each frame's quad to a ``size`` x ``size`` crop (kornia, bilinear).

    frames: [B, C, H, W] float (any range; outside the frame is 0) on any device.
    quads: [B, 4, 2] pixel-index quads. Returns [B, C, size, size] on the frames' device and dtype.
    With ``antialias`` each frame is first blurred by a Gaussian matched to its downscale factor.
    Only the quads' bounding box (plus the blur margin) is processed, so HD frames stay cheap.
    """
    from kornia.filters import gaussian_blur2d
    from kornia.geometry.transform import warp_perspective

    quads = np.asarray(quads, dtype=np.float64)
    if frames.ndim != 4 or quads.shape != (frames.shape[0], 4, 2):
        raise ValueError(f"Expected frames [B, C, H, W] and quads [B, 4, 2], got {list(frames.shape)} and {list(quads.shape)}.")
    if np.isnan(quads).any():
        raise ValueError("A quad is NaN (a frame without a face); warp only frames that have a face.")
    height, width = frames.shape[-2:]
    scale = quad_scale(quads, size)
    sigma = TRIANGLE_SIGMA * np.sqrt(np.clip(scale**2 - 1.0, 0.0, None))
    radius = int(math.ceil(BLUR_TRUNCATE * sigma.max())) if antialias else 0
    # Region of the frames that the warp reads: the quads' bounding box, the blur radius, one pixel.
    margin = radius + 2
    x0 = int(max(math.floor(quads[..., 0].min()) - margin, 0))
    y0 = int(max(math.floor(quads[..., 1].min()) - margin, 0))
    x1 = int(min(math.ceil(quads[..., 0].max()) + margin + 1, width))
    y1 = int(min(math.ceil(quads[..., 1].max()) + margin + 1, height))
    if x1 <= x0 or y1 <= y0:  # the quads lie entirely outside the frame: the crops are all padding
        return frames.new_zeros(frames.shape[0], frames.shape[1], size, size)
    region = frames[:, :, y0:y1, x0:x1]
    work = region if region.is_floating_point() else region.float()
    if radius > 0:
        sigmas = torch.as_tensor(np.maximum(sigma, 1e-3), dtype=torch.float32, device=frames.device)
        work = gaussian_blur2d(work, 2 * radius + 1, sigmas[:, None].expand(-1, 2).contiguous(), border_type="replicate")
    homographies = crop_homographies(quads, size) @ _translation(x0, y0)  # region index -> crop index
    matrices = torch.as_tensor(homographies, dtype=torch.float32, device=frames.device)
    crops = warp_perspective(work.float(), matrices, (size, size), mode="bilinear", padding_mode="zeros", align_corners=True)
    return crops.to(frames.dtype)


def warp_to_frames(crops: torch.Tensor, quads: np.ndarray, height: int, width: int) -> torch.Tensor:
    """Inverse warp: put each crop [B, C, S, S] back onto a [B, C, height, width] canvas along its quad.

    Bilinear (kornia); canvas pixels that sample nothing of the crop are exactly 0, so warping a
    crop of ones gives the paste alpha (1 inside the quad, fractional on its border, 0 outside).
    """
    from kornia.geometry.transform import warp_perspective

    quads = np.asarray(quads, dtype=np.float64)
    if crops.ndim != 4 or quads.shape != (crops.shape[0], 4, 2):
        raise ValueError(f"Expected crops [B, C, S, S] and quads [B, 4, 2], got {list(crops.shape)} and {list(quads.shape)}.")
    size = crops.shape[-1]
    inverse = np.linalg.inv(crop_homographies(quads, size))  # crop index -> frame index
    matrices = torch.as_tensor(inverse, dtype=torch.float32, device=crops.device)
    return warp_perspective(crops.float(), matrices, (height, width), mode="bilinear", padding_mode="zeros",
                            align_corners=True).to(crops.dtype)


def crop_release(frame: np.ndarray, quad: np.ndarray, *, size: int = CROP_SIZE) -> np.ndarray:
    """The release's crop of one frame: quad warped to 1024 (bilinear), saved as JPEG quality 75,
    reloaded and resized to ``size`` (PIL bilinear, antialiased).

    frame: [H, W, 3] uint8 RGB; quad: [4, 2] pixel indices -> [size, size, 3] uint8 RGB.
    """
    from PIL import Image

    image = Image.fromarray(frame)
    quad = np.array(quad, dtype=np.float64)
    qsize = np.hypot(*(quad[3] - quad[1]) / 2) * 2
    shrink = int(np.floor(qsize / RELEASE_WARP_SIZE * 0.5))
    if shrink > 1:  # a quad far larger than 1024: pre-shrink by an integer factor
        shrunk = (int(np.rint(image.size[0] / shrink)), int(np.rint(image.size[1] / shrink)))
        image = image.resize(shrunk, Image.LANCZOS)
        quad /= shrink
        qsize /= shrink
    border = max(int(np.rint(qsize * RELEASE_BORDER_FRACTION)), RELEASE_MIN_BORDER)
    box = (
        max(int(np.floor(quad[:, 0].min())) - border, 0), max(int(np.floor(quad[:, 1].min())) - border, 0),
        min(int(np.ceil(quad[:, 0].max())) + border, image.size[0]), min(int(np.ceil(quad[:, 1].max())) + border, image.size[1]),
    )
    if box[2] - box[0] < image.size[0] or box[3] - box[1] < image.size[1]:
        image = image.crop(box)
        quad -= box[:2]
    warped = image.transform((RELEASE_WARP_SIZE,) * 2, Image.QUAD, (quad + 0.5).flatten().tolist(), Image.BILINEAR)
    buffer = io.BytesIO()
    warped.save(buffer, format="JPEG", quality=RELEASE_JPEG_QUALITY)
    buffer.seek(0)
    reloaded = Image.open(buffer).convert("RGB")
    return np.asarray(reloaded.resize((size, size), Image.BILINEAR))


def align_frames(
    frames: torch.Tensor, quads: np.ndarray, *, config: AlignConfig = AlignConfig()
) -> torch.Tensor:
    """Crops for the model from video frames: [B, H, W, 3] float in [0, 1] + quads [B, 4, 2]
    -> [B, 3, S, S] float in [-1, 1] (pixels outside the frame are black, as in the release)."""
    if config.method == "release":
        images = to_uint8(frames)
        crops = np.stack([crop_release(image, quad, size=config.size) for image, quad in zip(images, quads)])
        unit = torch.from_numpy(crops).to(frames.device).permute(0, 3, 1, 2).float() / 255.0
    else:
        unit = warp_to_crops(frames.permute(0, 3, 1, 2).float(), quads, size=config.size, antialias=config.antialias)
    return (unit * 2.0 - 1.0).clamp(-1.0, 1.0)
