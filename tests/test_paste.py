"""Paste-back (dva_model.face.paste): mask presets and refinements, and compositing that leaves everything
outside the mask (and outside the crop square) bit-identical, checked on a real clip."""

import functools

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from media import decoded_frames, dlib_track
from dva_model.face import align
from dva_model.constants import PARSING_CLASSES
from dva_model.face.paste import MASK_PRESETS, PasteConfig, build_masks, class_mask, paste_back, smooth_in_time

SKIN, HAIR, NECK, L_EAR = (PARSING_CLASSES.index(n) for n in ("skin", "hair", "neck", "l_ear"))


def striped_labels(count: int = 2, size: int = 64) -> torch.Tensor:
    """Labels [count, size, size]: one horizontal band per class 0..18."""
    rows = torch.arange(size) * len(PARSING_CLASSES) // size
    return rows[None, :, None].expand(count, size, size).clone()


def test_release_mask_is_the_face_without_hair_ears_and_neck():
    mask = class_mask(striped_labels(), MASK_PRESETS["release"])[0, 0]
    present = {int(c) for c in striped_labels()[0][mask.bool()].unique()}
    assert present == {1, 2, 3, 4, 5, 6, 9, 10, 11, 12, 13, 15}
    assert HAIR in MASK_PRESETS["hair"] and NECK in MASK_PRESETS["beard"] and L_EAR in MASK_PRESETS["glasses"]
    assert HAIR not in MASK_PRESETS["beard"]


def test_union_dilation_and_feathering_grow_and_soften_the_mask():
    source = torch.zeros(1, 64, 64, dtype=torch.long)
    source[:, 20:40, 20:40] = SKIN
    edited = torch.zeros_like(source)
    edited[:, 40:50, 20:40] = SKIN  # something the edit added below the face
    plain = build_masks(source, edited)
    assert plain.sum() == 400 and set(plain.unique().tolist()) == {0.0, 1.0}
    union = build_masks(source, edited, config=PasteConfig(union_edited=True))
    assert union.sum() == 600
    dilated = build_masks(source, config=PasteConfig(dilate=3))
    assert dilated.sum() > plain.sum() + 4 * 20 * 3 and dilated[0, 0, 17, 30] == 1 and dilated[0, 0, 15, 30] == 0
    feathered = build_masks(source, config=PasteConfig(feather=2.0))
    assert feathered[0, 0, 30, 30] == pytest.approx(1.0, abs=1e-3)  # deep inside: untouched
    assert 0.3 < feathered[0, 0, 20, 30] < 0.7  # the edge: half way
    with pytest.raises(ValueError, match="edited"):
        build_masks(source, config=PasteConfig(union_edited=True))


def test_temporal_smoothing_damps_flicker_but_not_across_a_gap():
    masks = torch.zeros(10, 1, 4, 4)
    masks[::2] = 1.0  # flickering on and off
    smoothed = smooth_in_time(masks, 1.5)
    assert (smoothed[2:8] - 0.5).abs().max() < 0.1
    split = smooth_in_time(torch.cat([torch.zeros(3, 1, 4, 4), torch.ones(3, 1, 4, 4)]), 2.0, [0, 1, 2, 10, 11, 12])
    assert split[:3].max() == 0 and split[3:].min() == pytest.approx(1.0)
    assert torch.equal(smooth_in_time(masks[:1], 2.0), masks[:1])


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="subset"):
        PasteConfig(classes=(25,))
    with pytest.raises(ValueError, match="preset"):
        PasteConfig.from_preset("moustache")
    with pytest.raises(ValueError, match="composite"):
        PasteConfig(composite="alpha")


def face_labels(crop_landmarks: np.ndarray, size: int = 256) -> torch.Tensor:
    """A stand-in parsing: skin inside the hull of each crop's landmarks, background elsewhere."""
    from scipy.spatial import ConvexHull

    labels = []
    for points in crop_landmarks:
        hull = points[ConvexHull(points).vertices]
        image = Image.new("L", (size, size), 0)
        ImageDraw.Draw(image).polygon([tuple(p) for p in hull], fill=SKIN)
        labels.append(torch.from_numpy(np.asarray(image).astype(np.int64)))
    return torch.stack(labels)


@functools.lru_cache(maxsize=1)
def real_clip_8():
    return real_clip_frames(8)


def real_clip(count: int = 8):
    """The first ``count`` frames, quads, aligned crops and stand-in parsings (shared by the tests)."""
    frames, quads, crops, labels = real_clip_8()
    return frames[:count], quads[:count], crops[:count], labels[:count]


def real_clip_frames(count: int):
    frames = decoded_frames("single_face.mp4", count)
    track = dlib_track("single_face.mp4", 16)
    quads = align.compute_quads(track.landmarks)[:count]
    homographies = align.crop_homographies(quads)
    points = np.concatenate([track.landmarks[:count], np.ones((count, 68, 1))], axis=-1)
    mapped = np.einsum("nij,nkj->nki", homographies, points)
    crop_landmarks = mapped[..., :2] / mapped[..., 2:]
    return frames, quads, align.align_frames(frames, quads), face_labels(crop_landmarks)


def test_pasting_back_unedited_crops_changes_nothing_outside_the_face_and_little_inside():
    frames, quads, crops, labels = real_clip()
    masks = build_masks(labels)
    pasted, alpha = paste_back(frames, crops, masks, quads)
    face = align.warp_to_frames(masks, quads, 360, 640)[:, 0] > 0  # [N, H, W]
    assert torch.equal(face, alpha > 0)  # the returned alpha is where the crops went
    assert torch.equal(pasted[~face], frames[~face])
    inside = pasted[face] - frames[face]
    assert face.sum() > 8 * 20_000
    assert 10 * torch.log10(1 / (inside**2).mean()) > 35.0


def test_an_edit_reaches_the_frame_only_inside_the_mask():
    frames, quads, crops, labels = real_clip(4)
    masks = build_masks(labels, config=PasteConfig(dilate=4, feather=2.0))
    pasted, _ = paste_back(frames, -torch.ones_like(crops), masks, quads)  # the edit paints the face black
    alpha = align.warp_to_frames(masks, quads, 360, 640)[:, 0]
    assert torch.equal(pasted[alpha == 0], frames[alpha == 0])
    assert pasted[alpha > 0.99].max() < 0.02


def test_release_composite_replaces_the_square_and_nothing_outside_it():
    frames, quads, crops, labels = real_clip(4)
    edited = -torch.ones_like(crops)
    pasted, _ = paste_back(frames, edited, build_masks(labels), quads, source=crops, composite="release")
    square = align.warp_to_frames(torch.ones(4, 1, 256, 256), quads, 360, 640)[:, 0]
    assert torch.equal(pasted[square == 0], frames[square == 0])
    changed = (pasted - frames).abs().amax(-1) > 1e-6
    assert changed[square > 0.999].float().mean() > 0.5  # the resampled square differs from the frame
    with pytest.raises(ValueError, match="source"):
        paste_back(frames, edited, build_masks(labels), quads, composite="release")


def test_frames_without_a_face_pass_through_untouched():
    frames, quads, crops, labels = real_clip(4)
    has_face = np.array([True, False, True, False])
    quads = np.where(has_face[:, None, None], quads, np.nan)
    pasted, alpha = paste_back(frames, -torch.ones_like(crops), build_masks(labels), quads, has_face=has_face)
    assert torch.equal(pasted[1], frames[1]) and torch.equal(pasted[3], frames[3])
    assert not torch.equal(pasted[0], frames[0])
    assert not alpha[[1, 3]].any() and alpha[[0, 2]].amax() == 1.0


def _full_frame_paste(frames, edited, masks, quads):
    """The paste as one full-frame warp per crop (how it was computed before the window): the reference."""
    unit, mask = (edited.float() + 1) / 2, masks.float()
    warped = align.warp_to_frames(torch.cat([unit * mask, mask], 1), quads, frames.shape[1], frames.shape[2])
    colour, alpha = warped[:, :3].permute(0, 2, 3, 1), warped[:, 3:].permute(0, 2, 3, 1).clamp(0, 1)
    out = torch.where(alpha > 0, (frames * (1 - alpha) + colour).clamp(0, 1), frames)
    return out, alpha[..., 0]


def test_the_windowed_paste_equals_a_full_frame_warp_also_at_the_frame_edge():
    """Each face is warped and blended only inside its quad's bounding box (plus the bilinear border):
    the same frames and alpha as warping over the whole frame, for a face inside, one cut by the
    top-left corner, and one wholly outside the frame (left untouched)."""
    generator = torch.Generator().manual_seed(3)
    frames = torch.rand(3, 60, 80, 3, generator=generator)
    edited = torch.rand(3, 3, 16, 16, generator=generator) * 2 - 1
    masks = torch.rand(3, 1, 16, 16, generator=generator)
    quads = align.quads_from_axes(np.array([[40.0, 30.0], [3.0, 2.0], [-40.0, 90.0]]),
                                  np.array([[12.0, 3.0]] * 3), np.array([[-3.0, 12.0]] * 3))
    out, alpha = paste_back(frames, edited, masks, quads)
    expected, expected_alpha = _full_frame_paste(frames, edited, masks, quads)
    assert (out - expected).abs().max() < 1e-4 and (alpha - expected_alpha).abs().max() < 1e-4
    assert float(alpha[0].sum()) > 100 and 0 < float(alpha[1].sum()) < float(alpha[0].sum())  # inside; cut
    assert torch.equal(out[2], frames[2]) and float(alpha[2].abs().max()) == 0  # outside the frame
