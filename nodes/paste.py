"""PasteBack: edited crops composited into the full-resolution frames through face-parsing masks."""

import torch
from comfy_api.v0_0_2 import io

from ._host import image_to_crops, intermediate_device, progress_callback, require_all
from .types import CATEGORY_VIDEO, Faces, Model

NODE = "DVA Paste Back"
REQUIRES = (("kornia", "kornia"),)
CHUNK_FRAMES = 16  # frames composited per call (bounds the full-resolution temporaries)


class DVAPasteBack(io.ComfyNode):
    """Pastes the edited face into every frame that has one; the rest of each frame stays bit-identical."""

    REQUIRES = REQUIRES

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DVAPasteBack", display_name=NODE, category=CATEGORY_VIDEO, is_input_list=True,
            description=(
                "Composites the edited crops into the original frames through a BiSeNet face-parsing mask of "
                "the original crop (the published 'release' preset: face without hair, ears and neck) or a MASK "
                "you connect, and the inverse of the crop warp. Presets keep hair, glasses or beard edits; "
                "dilation, feathering and temporal smoothing soften the seam. Frames without a face pass through "
                "untouched. The video output carries the frames with the source's frame rate and audio, for core "
                "Save Video. Several people (a list from DVA Pick Face) are pasted in the list's order, the last on top."),
            inputs=[
                io.Image.Input("frames", tooltip="The original frames, the same ones DVA Face Align saw."),
                Faces.Input("faces", tooltip="The alignment of those frames from DVA Face Align."),
                io.Image.Input("crops", tooltip="The edited crops from DVA DDIM Decode (one per frame with a face); "
                                                "crops of another size are resized to the alignment's crop size."),
                Model.Input("model", tooltip="The DVA model; its face parser builds the paste masks."),
                *paste_setting_inputs(),
                io.Float.Input("fps", default=30.0, min=1.0, max=240.0, step=0.001, tooltip=
                               "Frame rate of the video output; connect DVA Video Load's fps to keep the source's."),
                io.Mask.Input("mask", optional=True, tooltip=
                              "Your own paste mask in crop space, [M, H, W] in 0..1 (one per crop, or one for all; "
                              "resized to the crop size); replaces the face-parsing mask and its preset, union, "
                              "dilation, feathering and temporal settings."),
                io.Audio.Input("audio", optional=True, tooltip=
                               "Audio for the video output; connect DVA Video Load's audio to keep the source's."),
            ],
            outputs=[
                io.Image.Output(display_name="frames", tooltip="The edited frames at the input's size, [N, H, W, 3] in 0..1."),
                io.Mask.Output(display_name="mask", tooltip=
                               "Where the edited face was pasted, [N, H, W] in 0..1 (0 on frames without a face)."),
                io.Video.Output(display_name="video", tooltip=
                                "The edited frames with the given frame rate and audio, for core Save Video."),
            ],
        )

    @classmethod
    def execute(cls, frames, faces, crops, model, mask_preset, union_edited, dilate, feather, temporal_sigma,
                composite, fps=(30.0,), mask=None, audio=None) -> io.NodeOutput:
        # Every input is a list (is_input_list): the faces and crops hold one entry per person.
        require_all(NODE, REQUIRES)
        from dva_model.pipeline import EditConfig
        from dva_model.progress import one_bar

        frames, model, fps = single(frames, "frames"), single(model, "model"), single(fps, "fps")
        audio = None if audio is None else single(audio, "audio")
        people = per_person(faces, crops, "crops from DVA DDIM Decode")
        masks = None if mask is None else per_person(faces, mask, "masks", one_for_all=True)
        paste = paste_settings(mask_preset, union_edited, dilate, feather, temporal_sigma, composite)
        config = EditConfig(paste=paste)
        # One bar: per person, a unit per frame for the masks, then per frame pasted.
        bar = one_bar(progress_callback(), {f"{stage} {k}": len(frames) for k in range(len(people))
                                            for stage in ("masks", "paste")})
        alpha = torch.zeros(frames.shape[:3])
        for k, (person, edited_image) in enumerate(people):
            own_mask = None if masks is None else masks[k][1]
            frames, person_alpha = paste_person(frames, person, edited_image, model, config, own_mask,
                                                mask_progress=bar(f"masks {k}"), paste_progress=bar(f"paste {k}"))
            alpha = torch.maximum(alpha, person_alpha)  # later people paste over earlier ones
        out, alpha = frames.to(intermediate_device()), alpha.to(intermediate_device())
        return io.NodeOutput(out, alpha, as_video(out, fps, audio))


def paste_person(frames, faces, crops, model, config, mask=None, *, mask_progress=None, paste_progress=None):
    """One person's edited ``crops`` (IMAGE [M, h, w, 3]) pasted into ``frames`` [N, H, W, 3] through the
    face-parsing masks of ``config`` (or the user's crop-space ``mask``): (frames, alpha [N, H, W]) on the CPU."""
    from dva_model.pipeline import paste_masks

    size = faces.config.size
    edited = resize_crops(image_to_crops(crops), size)
    _check_sizes(frames, faces, edited)
    if mask is None:
        numbers = [faces.indices[row] for row in faces.face_rows]
        masks = paste_masks(model.acquire(), faces.crops, edited, numbers, config=config, callback=mask_progress).cpu()
    else:
        masks = crop_masks(mask, len(edited), size)
    return composite_frames(frames, faces, edited, masks, composite=config.paste.composite, device=model.device,
                            callback=paste_progress)


def paste_settings(mask_preset, union_edited, dilate, feather, temporal_sigma, composite):
    """The ``PasteConfig`` of the paste widgets (``paste_setting_inputs``), each given as a one-item list."""
    from dva_model.face.paste import PasteConfig

    return PasteConfig.from_preset(
        single(mask_preset, "mask_preset"), union_edited=single(union_edited, "union_edited"),
        dilate=single(dilate, "dilate"), feather=single(feather, "feather"),
        temporal_sigma=single(temporal_sigma, "temporal_sigma"), composite=single(composite, "composite"))


def single(values: list, name: str):
    """The one value of a list input that must not vary by person (several: refused in one sentence)."""
    if len(values) != 1:
        raise ValueError(f"One {name} serves every person, but {len(values)} came in; connect a single {name}, "
                         "not a list.")
    return values[0]


def per_person(faces: list, values: list, name: str, *, one_for_all: bool = False) -> list:
    """[(faces, value)] for each person: one value per person (or, with ``one_for_all``, one for everyone)."""
    if len(values) != len(faces) and not (one_for_all and len(values) == 1):
        raise ValueError(f"{NODE} got {len(faces)} people's faces but {len(values)} {name}; connect the chain of "
                         "the same DVA Pick Face (or DVA Face Align).")
    return [(person, values[min(k, len(values) - 1)]) for k, person in enumerate(faces)]


def resize_crops(crops, size: int):
    """[M, 3, h, w] -> [M, 3, size, size] (antialiased bilinear; unchanged when already that size)."""
    import torch.nn.functional as F

    if tuple(crops.shape[-2:]) == (size, size):
        return crops
    return F.interpolate(crops, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def crop_masks(mask, count: int, size: int):
    """A user MASK [M or 1, h, w] (or [h, w]) in 0..1 -> paste masks [count, 1, size, size] float32."""
    import torch.nn.functional as F

    mask = mask.float().cpu()
    mask = mask[None] if mask.ndim == 2 else mask  # [h, w] -> [1, h, w]
    if mask.ndim != 3 or len(mask) not in (1, count):
        raise ValueError(f"DVA Paste Back's mask must be one MASK per edited crop ({count}) or a single one, "
                         f"got shape {tuple(mask.shape)}; connect a mask made in crop space.")
    mask = F.interpolate(mask[:, None], size=(size, size), mode="bilinear", align_corners=False)  # [M, 1, S, S]
    return mask.clamp(0, 1).expand(count, -1, -1, -1).contiguous()


def as_video(frames, fps: float, audio):
    """Core VIDEO of IMAGE ``frames`` [N, H, W, 3] at ``fps`` with ``audio`` (or none)."""
    from fractions import Fraction

    from comfy_api.v0_0_2 import InputImpl, Types

    rate = Fraction(fps).limit_denominator(1001)
    return InputImpl.VideoFromComponents(Types.VideoComponents(images=frames, frame_rate=rate, audio=audio))


def _check_sizes(frames, faces, edited) -> None:
    if len(frames) != len(faces.has_face):
        raise ValueError(f"DVA Paste Back got {len(frames)} frames but the alignment has {len(faces.has_face)}; "
                         "connect the same frames that went into DVA Face Align.")
    if tuple(frames.shape[1:3]) != (faces.info.height, faces.info.width):
        raise ValueError(f"The frames are {frames.shape[2]}x{frames.shape[1]} but were aligned at "
                         f"{faces.info.width}x{faces.info.height}; connect the frames DVA Face Align saw.")
    if len(edited) != len(faces.crops):
        raise ValueError(f"Expected {len(faces.crops)} crops (one per frame with a face), got {len(edited)}; "
                         "connect DVA DDIM Decode's output.")


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


def paste_setting_inputs() -> list:
    """The paste-mask and composite widgets (DVA Paste Back and DVA Decode + Paste to Video share them)."""
    from dva_model.face.paste import COMPOSITES, MASK_PRESETS

    return [
        io.Combo.Input("mask_preset", options=list(MASK_PRESETS), default="release", tooltip=
                       "Face-parsing classes taken from the edit: 'release' (face without hair, ears, "
                       "neck), 'hair', 'glasses', 'beard' or 'head' (everything but background, cloth, hat)."),
        io.Boolean.Input("union_edited", default=False, tooltip=
                         "Also paste what the EDITED crop's parsing puts in those classes (keeps what an "
                         "edit adds outside the original face)."),
        io.Int.Input("dilate", default=0, min=0, max=64, step=1,
                     tooltip="Grow the mask by this many crop pixels (0 = as published)."),
        io.Float.Input("feather", default=0.0, min=0.0, max=32.0, step=0.5, tooltip=
                       "Gaussian softening of the mask edge, in crop pixels (0 = a hard edge, as published)."),
        io.Float.Input("temporal_sigma", default=0.0, min=0.0, max=10.0, step=0.1, tooltip=
                       "Smooth the mask over time, in frames (0 = off); reduces flicker at the seam."),
        io.Combo.Input("composite", options=list(COMPOSITES), default="frame", tooltip=
                       "'frame': blend at full resolution, only masked pixels change. 'release': blend "
                       "inside the crop and paste the whole square, as published."),
    ]
