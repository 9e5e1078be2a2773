"""PasteBack: edited crops composited into the full-resolution frames through face-parsing masks."""

from ._host import image_to_crops, intermediate_device, progress_callback, require_all
from .types import FACES, MODEL

NODE = "DVA Paste Back"
REQUIRES = (("kornia", "kornia"),)
CHUNK_FRAMES = 16  # frames composited per call (bounds the full-resolution temporaries)


class DVAPasteBack:
    """Pastes the edited face into every frame that has one; the rest of each frame stays bit-identical."""

    CATEGORY = "DVA"
    DESCRIPTION = (
        "Composites the edited crops into the original frames through a BiSeNet face-parsing mask of "
        "the original crop (the published 'release' preset: face without hair, ears and neck) and the "
        "inverse of the crop warp. Presets keep hair, glasses or beard edits; dilation, feathering and "
        "temporal smoothing soften the seam. Frames without a face pass through untouched."
    )
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("frames", "mask")
    OUTPUT_TOOLTIPS = (
        "The edited frames at the input's size, [N, H, W, 3] in 0..1.",
        "Where the edited face was pasted, [N, H, W] in 0..1 (0 on frames without a face).",
    )
    FUNCTION = "execute"
    REQUIRES = REQUIRES

    @classmethod
    def INPUT_TYPES(cls):
        from dva_model.face.paste import COMPOSITES, MASK_PRESETS

        return {"required": {
            "frames": ("IMAGE", {"tooltip": "The original frames, the same ones DVA Face Align saw."}),
            "faces": (FACES, {"tooltip": "The alignment of those frames from DVA Face Align."}),
            "crops": ("IMAGE", {"tooltip": "The edited crops from DVA DDIM Decode (one per frame with a face)."}),
            "model": (MODEL, {"tooltip": "The DVA model; its face parser builds the paste masks."}),
            "mask_preset": (list(MASK_PRESETS), {"default": "release", "tooltip":
                            "Face-parsing classes taken from the edit: 'release' (face without hair, ears, "
                            "neck), 'hair', 'glasses', 'beard' or 'head' (everything but background, cloth, hat)."}),
            "union_edited": ("BOOLEAN", {"default": False, "tooltip":
                             "Also paste what the EDITED crop's parsing puts in those classes (keeps what an "
                             "edit adds outside the original face)."}),
            "dilate": ("INT", {"default": 0, "min": 0, "max": 64, "step": 1, "tooltip":
                       "Grow the mask by this many crop pixels (0 = as published)."}),
            "feather": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 32.0, "step": 0.5, "tooltip":
                        "Gaussian softening of the mask edge, in crop pixels (0 = a hard edge, as published)."}),
            "temporal_sigma": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 10.0, "step": 0.1, "tooltip":
                               "Smooth the mask over time, in frames (0 = off); reduces flicker at the seam."}),
            "composite": (list(COMPOSITES), {"default": COMPOSITES[0], "tooltip":
                          "'frame': blend at full resolution, only masked pixels change. 'release': blend "
                          "inside the crop and paste the whole square, as published."}),
        }}

    @classmethod
    def execute(cls, frames, faces, crops, model, mask_preset, union_edited, dilate, feather, temporal_sigma,
                composite):
        require_all(NODE, REQUIRES)
        from dva_model.face.paste import PasteConfig
        from dva_model.pipeline import EditConfig, paste_masks

        edited = image_to_crops(crops)
        _check_sizes(frames, faces, edited)
        config = EditConfig(paste=PasteConfig.from_preset(mask_preset, union_edited=union_edited, dilate=dilate,
                                                          feather=feather, temporal_sigma=temporal_sigma,
                                                          composite=composite))
        numbers = [faces.indices[row] for row in faces.face_rows]
        masks = paste_masks(model.acquire(), faces.crops, edited, numbers, config=config).cpu()
        out, alpha = composite_frames(frames, faces, edited, masks, composite=composite, device=model.device,
                                      callback=progress_callback())
        return (out.to(intermediate_device()), alpha.to(intermediate_device()))


def _check_sizes(frames, faces, edited) -> None:
    if len(frames) != len(faces.has_face):
        raise ValueError(f"DVA Paste Back got {len(frames)} frames but the alignment has {len(faces.has_face)}; "
                         "connect the same frames that went into DVA Face Align.")
    if tuple(frames.shape[1:3]) != (faces.info.height, faces.info.width):
        raise ValueError(f"The frames are {frames.shape[2]}x{frames.shape[1]} but were aligned at "
                         f"{faces.info.width}x{faces.info.height}; connect the frames DVA Face Align saw.")
    if tuple(edited.shape) != tuple(faces.crops.shape):
        raise ValueError(f"Expected {len(faces.crops)} crops of {faces.config.size}x{faces.config.size} (one per "
                         f"frame with a face), got {list(edited.shape[:1]) + list(edited.shape[2:])}; connect "
                         "DVA DDIM Decode's output.")


def composite_frames(frames, faces, edited, masks, *, composite, device, callback=None):
    """Paste chunk by chunk on ``device``: (frames [N, H, W, 3], alpha [N, H, W]) on the CPU.

    edited: [M, 3, S, S] in [-1, 1] and masks [M, 1, S, S], one per frame with a face (faces.face_rows).
    """
    import numpy as np
    import torch

    from dva_model.face.paste import crop_rows, paste_frames

    count = len(frames)
    rows, outputs, alphas = crop_rows(faces.has_face), [], []
    for start in range(0, count, CHUNK_FRAMES):
        positions = np.arange(start, min(start + CHUNK_FRAMES, count))
        out, alpha = paste_frames(frames[start: start + len(positions)].to(device), positions, rows, edited, masks,
                                  faces.quads, crops=faces.crops, composite=composite)
        outputs.append(out.cpu())
        alphas.append(alpha.cpu())
        if callback is not None:
            callback(int(positions[-1]) + 1, count)
    return torch.cat(outputs), torch.cat(alphas)
