"""FFHQ alignment (dva_model.face.align): the published quad formula, smoothing, the warp and its inverse,
checked against PIL (what the release uses) and on a real talking-face clip with dlib's landmarks."""

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter1d

from media import decoded_frames, dlib_landmarker, dlib_track
from dva_model.face import align
from dva_model.face.tracking import track_faces

# The FFHQ recipe puts an upright face's eyes here in a 256 crop: x = 128 -+ 32 when the crop side is
# set by the eye distance (|x| = 2 |eye_to_eye|), y = 128 minus the 0.1 * eye_to_mouth shift (~7 px).
TEMPLATE_LEFT_EYE = np.array([96.0, 121.0])
TEMPLATE_RIGHT_EYE = np.array([160.0, 121.0])


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / ((a - b) ** 2).mean()))


def to_crop_coords(points: np.ndarray, homographies: np.ndarray) -> np.ndarray:
    """[N, K, 2] frame pixel indices -> crop pixel indices."""
    homogeneous = np.concatenate([points, np.ones(points.shape[:-1] + (1,))], axis=-1)
    mapped = np.einsum("nij,nkj->nki", homographies, homogeneous)
    return mapped[..., :2] / mapped[..., 2:]


def synthetic_landmarks() -> np.ndarray:
    points = np.zeros((1, 68, 2))
    points[0, 36:42] = (100, 100)
    points[0, 42:48] = (160, 100)
    points[0, 48], points[0, 54] = (110, 170), (150, 170)
    return points


def test_quad_follows_the_published_formula():
    # eye_avg (130, 100), eye_to_eye (60, 0), eye_to_mouth (0, 70): x = (130, 0) normalised, times
    # max(2 * 60, 1.8 * 70) = 126; y = (0, 126); c = eye_avg + 0.1 * eye_to_mouth = (130, 107).
    c, x, y = align.quad_axes(synthetic_landmarks())
    assert np.allclose(c, [[130, 107]]) and np.allclose(x, [[126, 0]]) and np.allclose(y, [[0, 126]])
    quad = align.quads_from_axes(c, x, y)[0]
    assert np.allclose(quad, [[4, -19], [4, 233], [256, 233], [256, -19]])


def test_quad_turns_and_moves_with_the_face():
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    shift = np.array([37.0, -12.0])
    moved = synthetic_landmarks() @ rotation.T + shift
    expected = align.quads_from_axes(*align.quad_axes(synthetic_landmarks()))[0] @ rotation.T + shift
    assert np.allclose(align.quads_from_axes(*align.quad_axes(moved))[0], expected)


def test_smoothing_is_scipys_gaussian_filter_per_run_of_face_frames():
    rng = np.random.default_rng(0)
    c, x, y = (rng.normal(size=(30, 2)) for _ in range(3))
    valid = np.ones(30, dtype=bool)
    valid[12:15] = False
    sc, sx, sy = align.smooth_axes(c, x, y, valid)
    for part in (slice(0, 12), slice(15, 30)):
        assert np.allclose(sc[part], gaussian_filter1d(c[part], 1.0, axis=0))
        assert np.allclose(sx[part], gaussian_filter1d(x[part], 3.0, axis=0))
        assert np.allclose(sy[part], gaussian_filter1d(y[part], 3.0, axis=0))
    assert np.isnan(sc[12:15]).all()


def test_inverse_coefficients_equal_the_release_least_squares_and_hit_the_corners():
    quads = align.compute_quads(dlib_track("single_face.mp4", 16).landmarks)
    coefficients = align.inverse_coefficients(quads)
    for quad, coeff in zip(quads, coefficients):
        rows, rhs = [], []
        for (px, py), (qx, qy) in zip(quad + 0.5, align.crop_corners()):
            rows += [[px, py, 1, 0, 0, 0, -qx * px, -qx * py], [0, 0, 0, px, py, 1, -qy * px, -qy * py]]
            rhs += [qx, qy]
        a = np.array(rows)
        assert np.allclose(np.linalg.inv(a.T @ a) @ a.T @ np.array(rhs), coeff, rtol=1e-6, atol=1e-9)
    corners = to_crop_coords(quads, align.crop_homographies(quads))
    assert np.allclose(corners, align.crop_corners() - 0.5, atol=1e-6)  # continuous 0 = index -0.5


def test_warp_matches_pils_quad_transform_without_antialiasing():
    frames = decoded_frames("single_face.mp4", 4)
    quads = align.compute_quads(dlib_track("single_face.mp4", 16).landmarks)[:4]
    ours = align.warp_to_crops(frames.permute(0, 3, 1, 2), quads, antialias=False)
    images = (frames * 255).round().to(torch.uint8).numpy()
    for image, quad, crop in zip(images, quads, ours):
        reference = Image.fromarray(image).transform((256, 256), Image.QUAD, (quad + 0.5).flatten().tolist(), Image.BILINEAR)
        difference = np.abs(crop.permute(1, 2, 0).numpy() * 255 - np.asarray(reference, dtype=np.float32))
        assert difference.max() <= 1.01 and difference.mean() < 0.6


def test_inverse_warp_matches_pils_perspective_paste_inside_the_square():
    quads = align.compute_quads(dlib_track("single_face.mp4", 16).landmarks)[:2]
    crops = torch.randint(0, 256, (2, 3, 256, 256), generator=torch.Generator().manual_seed(0)).float() / 255
    ours = align.warp_to_frames(crops, quads, 360, 640)
    interior = align.warp_to_frames(torch.ones(2, 1, 256, 256), quads, 360, 640)[:, 0] > 0.999
    for crop, coeff, frame, inside in zip(crops, align.inverse_coefficients(quads), ours, interior):
        pixels = (crop.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        reference = np.asarray(Image.fromarray(pixels).transform((640, 360), Image.PERSPECTIVE, coeff.tolist(), Image.BILINEAR))
        difference = np.abs(frame.permute(1, 2, 0).numpy() * 255 - reference)[inside.numpy()]
        assert inside.sum() > 50_000 and difference.max() <= 1.01
    outside = align.warp_to_frames(torch.ones(2, 1, 256, 256), quads, 360, 640) == 0
    assert outside.float().mean() > 0.5
    assert (ours.masked_select(outside.expand_as(ours)) == 0).all()


def test_aligned_eyes_sit_on_the_template_in_every_frame():
    frames = decoded_frames("single_face.mp4", 16)
    track = dlib_track("single_face.mp4", 16)
    quads = align.compute_quads(track.landmarks)
    crops = align.align_frames(frames, quads)
    assert crops.shape == (16, 3, 256, 256) and -1 <= crops.min() and crops.max() <= 1
    # Re-detect the landmarks inside the crops: the warp itself put the eyes there.
    images = ((crops + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    in_crops = track_faces([images], dlib_landmarker(), source="crops").landmarks
    left, right = in_crops[:, 36:42].mean(1), in_crops[:, 42:48].mean(1)
    assert np.abs(left - TEMPLATE_LEFT_EYE).max() < 4.0
    assert np.abs(right - TEMPLATE_RIGHT_EYE).max() < 4.0


def test_smoothed_crop_jitters_less_than_the_raw_landmarks():
    landmarks = dlib_track("single_face.mp4", 32).landmarks

    def jitter(points):  # mean size of the frame-to-frame acceleration, pixels
        return np.linalg.norm(points[2:] - 2 * points[1:-1] + points[:-2], axis=-1).mean()

    smoothed = align.compute_quads(landmarks)
    raw = align.quads_from_axes(*align.quad_axes(landmarks))
    assert jitter(smoothed) < 0.5 * jitter(landmarks)
    assert jitter(smoothed) < 0.25 * jitter(raw)


def test_warp_then_inverse_warp_round_trips():
    frames = decoded_frames("single_face.mp4", 4).permute(0, 3, 1, 2)
    quads = align.compute_quads(dlib_track("single_face.mp4", 16).landmarks)[:4]
    crops = align.warp_to_crops(frames, quads)
    alpha = align.warp_to_frames(torch.ones(4, 1, 256, 256), quads, 360, 640)
    back = align.warp_to_frames(crops, quads, 360, 640)
    inside = (alpha > 0.999).expand_as(frames)
    assert psnr(back[inside], frames[inside]) > 35.0
    again = align.warp_to_crops(back * alpha + frames * (1 - alpha), quads)
    assert psnr(again[..., 4:-4, 4:-4], crops[..., 4:-4, 4:-4]) > 38.0


def test_antialiasing_removes_aliasing_when_the_face_is_much_larger_than_the_crop():
    checker = (torch.arange(1024)[:, None] + torch.arange(1024)[None, :]) % 2  # 1-pixel checkerboard
    frame = checker.float().expand(1, 3, 1024, 1024)
    quad = np.array([[[10, 10], [10, 1010], [1010, 1010], [1010, 10]]], dtype=float)  # ~4x downscale, tilted below
    quad = quad + np.array([[0, 0], [13, 0], [13, 0], [0, 0]])
    plain = align.warp_to_crops(frame, quad, antialias=False)
    smooth = align.warp_to_crops(frame, quad, antialias=True)
    assert smooth.std() < 0.25 * plain.std()
    assert abs(smooth.mean() - 0.5) < 0.02


def test_release_route_gives_a_crop_close_to_the_direct_warp():
    frames = decoded_frames("single_face.mp4", 2)
    quads = align.compute_quads(dlib_track("single_face.mp4", 16).landmarks)[:2]
    release = align.align_frames(frames, quads, config=align.AlignConfig(method="release"))
    direct = align.align_frames(frames, quads)
    assert release.shape == direct.shape == (2, 3, 256, 256)
    assert 0 < (release - direct).abs().mean() * 127.5 < 3.0


def test_nan_quads_and_bad_shapes_are_refused():
    frames = torch.zeros(1, 3, 32, 32)
    with pytest.raises(ValueError, match="NaN"):
        align.warp_to_crops(frames, np.full((1, 4, 2), np.nan))
    with pytest.raises(ValueError, match="quads"):
        align.warp_to_crops(frames, np.zeros((2, 4, 2)))
