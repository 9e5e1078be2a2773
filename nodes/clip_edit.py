"""Text-driven identity edits (the published CLIP edit): CLIP loader, the edit, and identity-delta files.

DVA_CLIP carries a ``nodes._host.ModelHandle`` around ``dva_model.edit.clip_loss.ClipDirectionalLoss``;
DVA_IDENTITY_DELTA a ``dva_model.edit.identity.IdentityDelta``. A delta always acts on the identity's base,
before the attribute edits chained onto it (whatever the node order): ``compose_identity_edits``'s order.
"""

import torch

from ._host import DEVICES, HandleCache, ModelHandle, input_file_problem, input_fingerprint, input_path, model_files
from ._host import model_path, output_path, progress_callback, require_all, resolve_device
from .edit import NORMS
from .encode import latent_files
from .types import FACES, IDENTITY, LATENT, MODEL

CLIP = "DVA_CLIP"
DELTA = "DVA_IDENTITY_DELTA"
CACHED_WEIGHTS = "OpenAI ViT-B/16 from the local CLIP cache"
CLIP_SUFFIXES = (".pt", ".safetensors", ".bin")
DELTA_SUFFIX = ".safetensors"
REQUIRES = (("open_clip", "open-clip-torch"), ("safetensors", "safetensors"))
MAX_ITERATIONS = 20000
MAX_WEIGHT = 100.0
MAX_SCALE = 5.0
MAX_FRAME = 1 << 20
TRAJECTORY_BATCH = 5  # the edit's one UNet call per iteration holds the 5 trajectory states

_clips = HandleCache(1)  # keep one CLIP resident at most


def _norm_input():
    return (list(NORMS), {"default": "keep (exact at 0)", "tooltip":
            "'keep': the edited identity keeps the input identity's length, so scale 0 reproduces the input "
            "exactly. 'unit': the release's unit-length result, l2n(z_id + scale * delta)."})


def _scale_input():
    return ("FLOAT", {"default": 0.5, "min": -MAX_SCALE, "max": MAX_SCALE, "step": 0.01, "tooltip":
            "How strongly to apply the learnt delta: z_id + scale * delta (the README's beard used 0.5; "
            "negative values push the other way)."})


def load_clip_handle(weights: str, device: torch.device, *, download: bool = False) -> ModelHandle:
    """The process-wide CLIP directional loss for (weights, device): one resident copy, as for DVA models.

    download: with the cached-weights choice, fetch OpenAI's ViT-B/16 through open_clip when no cache has it.
    """
    from dva_model.edit.clip_loss import clip_loss_for, load_clip
    from dva_model.formats.clip_weights import download_clip_weights, find_cached_clip_weights

    path = find_cached_clip_weights() if weights == CACHED_WEIGHTS else model_path(weights)
    if path is None and download:
        path = download_clip_weights()
    if path is None:
        raise FileNotFoundError("No OpenAI CLIP ViT-B/16 in the local caches; turn on download_if_missing in DVA "
                                "CLIP Loader, run `python -m dva_model download --what clip`, or put ViT-B-16.pt "
                                "into ComfyUI's models/dva folder and pick it.")
    # Loaded outside inference mode (as every cached model): the edit takes gradients through CLIP.
    return _clips.get(path, device=device, dtype=torch.float32, model_id=lambda stamp: stamp.name,
                      load=lambda file, offload: clip_loss_for(load_clip(file, device=offload)))


class DVACLIPLoader:
    """Loads OpenAI's CLIP ViT-B/16 for text-driven edits (downloads only with download_if_missing)."""

    CATEGORY = "DVA"
    DESCRIPTION = ("Loads the CLIP model of the published text-driven edit: OpenAI's ViT-B/16 from the local "
                   "CLIP cache, or a ViT-B-16.pt / open_clip .safetensors file from ComfyUI/models/dva.")
    RETURN_TYPES = (CLIP,)
    RETURN_NAMES = ("clip",)
    OUTPUT_TOOLTIPS = ("CLIP for DVA CLIP Edit.",)
    FUNCTION = "execute"
    REQUIRES = REQUIRES

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "weights": ([CACHED_WEIGHTS] + model_files(*CLIP_SUFFIXES), {"default": CACHED_WEIGHTS, "tooltip":
                        "OpenAI's ViT-B-16.pt (as cached by the clip / open_clip packages), or such a file "
                        "placed in models/dva."}),
            "device": (list(DEVICES), {"default": "auto", "tooltip": "'auto' runs on ComfyUI's compute device."}),
        }, "optional": {"download_if_missing": ("BOOLEAN", {"default": False, "tooltip":
            "With the local-cache choice and no cached copy: download OpenAI's ViT-B/16 (about 600 MB) through "
            "open_clip into its cache first. Off: nothing is downloaded."})}}

    @classmethod
    def execute(cls, weights, device, download_if_missing=False):
        require_all("DVA CLIP Loader", REQUIRES)
        return (load_clip_handle(weights, resolve_device(device), download=download_if_missing),)


class DVACLIPEdit:
    """Learns an identity delta from a text edit on one reference frame and applies it to the identity."""

    CATEGORY = "DVA"
    DESCRIPTION = (
        "The published CLIP edit: optimises the reference frame's identity so that one DDIM step of its "
        "5-step trajectory moves along the CLIP direction from source_text to target_text, keeping the "
        "identity (ArcFace) and the face region (masked L1) close. The learnt delta is applied to the "
        "identity for every frame. 2000 iterations as published; each is one batched UNet call."
    )
    RETURN_TYPES = (IDENTITY, DELTA)
    RETURN_NAMES = ("identity", "delta")
    OUTPUT_TOOLTIPS = ("The identity with the delta applied; chain attribute edits or connect to DDIM Decode.",
                       "The learnt delta, reusable on other clips (DVA Save / Apply Identity Delta).")
    FUNCTION = "execute"
    REQUIRES = REQUIRES

    @classmethod
    def INPUT_TYPES(cls):
        weight = {"min": 0.0, "max": MAX_WEIGHT, "step": 0.1}
        return {
            "required": {
                "model": (MODEL, {"tooltip": "The DVA model the clip was encoded with."}),
                "clip": (CLIP, {"tooltip": "CLIP from DVA CLIP Loader."}),
                "latent": (LATENT, {"tooltip": "The clip's encoding (the reference frame's features and x_T)."}),
                "identity": (IDENTITY, {"tooltip": "The identity to apply the learnt delta to."}),
                "source_text": ("STRING", {"default": "face", "tooltip": "Neutral description, e.g. 'face'."}),
                "target_text": ("STRING", {"default": "face with beard", "tooltip": "The edit, e.g. 'face with beard'."}),
                "reference_frame": ("INT", {"default": 0, "min": 0, "max": MAX_FRAME, "step": 1, "tooltip":
                                    "Frame (among those with a face) the edit is learnt on; the release uses 0."}),
                "iterations": ("INT", {"default": 2000, "min": 1, "max": MAX_ITERATIONS, "step": 1, "tooltip":
                               "Adam iterations (2000 as published)."}),
                "learning_rate": ("FLOAT", {"default": 0.002, "min": 1e-5, "max": 1.0, "step": 0.0001, "tooltip":
                                  "Adam learning rate (0.002 as published)."}),
                "clip_weight": ("FLOAT", {"default": 3.0, **weight, "tooltip": "Weight of the CLIP loss (README 3)."}),
                "identity_weight": ("FLOAT", {"default": 1.0, **weight, "tooltip":
                                    "Weight of 1 - cos(edited, original identity) (README 1; the paper's beard 1)."}),
                "l1_weight": ("FLOAT", {"default": 5.0, **weight, "tooltip":
                              "Weight of the L1 change inside the face mask (README 5)."}),
                "scale": _scale_input(),
                "norm": _norm_input(),
            },
            "optional": {
                "faces": (FACES, {"tooltip": "The aligned crops the latent was encoded from: the reference is "
                                  "then the real crop, as released, instead of its reconstruction."}),
            },
        }

    @classmethod
    def execute(cls, model, clip, latent, identity, source_text, target_text, reference_frame, iterations,
                learning_rate, clip_weight, identity_weight, l1_weight, scale, norm, faces=None):
        from dva_model.edit.clip_edit import ClipEditConfig, optimise_delta, reference_from_crops, reference_from_latent

        from .decode import check_same_model

        require_all("DVA CLIP Edit", REQUIRES)
        check_same_model(model, latent)
        config = ClipEditConfig(source_text=source_text, target_text=target_text, iterations=iterations,
                                learning_rate=learning_rate, clip_weight=clip_weight, identity_weight=identity_weight,
                                l1_weight=l1_weight)
        if faces is not None and len(faces.crops) != len(latent.x_T):
            raise ValueError(f"faces holds {len(faces.crops)} crops but the encoding {len(latent.x_T)} frames; "
                             "connect the DVA Face Align output the encoding was made from.")
        loss = clip.acquire(frames_per_call=0)  # CLIP first, so the DVA model is the one made resident last
        dva, callback = model.acquire(frames_per_call=TRAJECTORY_BATCH), progress_callback()
        reference = (reference_from_crops(dva, faces.crops, index=reference_frame) if faces is not None
                     else reference_from_latent(dva, latent, index=reference_frame, callback=callback))
        result = optimise_delta(dva, loss, reference, config=config, callback=callback)
        return (apply_to_identity(identity, result.delta, scale, norm), result.delta)


def apply_to_identity(identity, delta, scale: float, norm: str):
    """A new DVA_IDENTITY with the delta chained on; it acts before every attribute edit (whatever the order)."""
    from dva_model.edit.identity import DeltaEdit

    return identity.with_edit(DeltaEdit(delta=delta, scale=float(scale), norm=NORMS[norm]))


class DVAApplyIdentityDelta:
    """Applies a saved (or just learnt) identity delta to another clip's identity."""

    CATEGORY = "DVA"
    DESCRIPTION = ("Applies an identity delta (from DVA CLIP Edit or DVA Load Identity Delta) to an identity: "
                   "z_id_edit = l2n(z_id + scale * delta), as published. Works on any clip.")
    RETURN_TYPES = (IDENTITY,)
    RETURN_NAMES = ("identity",)
    OUTPUT_TOOLTIPS = ("The edited identity; chain attribute edits or connect to DDIM Decode.",)
    FUNCTION = "execute"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "identity": (IDENTITY, {"tooltip": "The identity to edit."}),
            "delta": (DELTA, {"tooltip": "An identity delta learnt by DVA CLIP Edit."}),
            "scale": _scale_input(),
            "norm": _norm_input(),
        }}

    @classmethod
    def execute(cls, identity, delta, scale, norm):
        return (apply_to_identity(identity, delta, scale, norm),)


class DVASaveIdentityDelta:
    """Writes an identity delta to the output folder, with the loss it reached."""

    CATEGORY = "DVA"
    DESCRIPTION = ("Saves an identity delta (.safetensors with its texts and settings) in the output folder; "
                   "DVA Load Identity Delta and `python -m dva_model` read it back.")
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "execute"
    REQUIRES = (("safetensors", "safetensors"),)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "delta": (DELTA, {"tooltip": "The delta to save."}),
            "filename_prefix": ("STRING", {"default": "dva/clip_delta", "tooltip":
                                "File name prefix inside the output folder (may contain sub-folders)."}),
        }}

    @classmethod
    def execute(cls, delta, filename_prefix):
        from dva_model.edit.clip_edit import save_delta

        path, name, subfolder = output_path(filename_prefix, DELTA_SUFFIX)
        save_delta(path, delta)
        info = dict(delta.info)
        summary = f"{delta.source_text!r} -> {delta.target_text!r}"
        if "loss_start" in info:
            summary += f": loss {info['loss_start']:.4f} -> {info['loss_end']:.4f}"
        return {"ui": {"files": [{"filename": name, "subfolder": subfolder, "type": "output"}], "text": [summary]}}


class DVALoadIdentityDelta:
    """Reads an identity delta saved by DVA Save Identity Delta or `python -m dva_model clip-edit`."""

    CATEGORY = "DVA"
    DESCRIPTION = ("Loads an identity delta (.safetensors) from the input folder, or from the output folder "
                   "(entries marked [output]).")
    RETURN_TYPES = (DELTA,)
    RETURN_NAMES = ("delta",)
    OUTPUT_TOOLTIPS = ("The saved delta; connect to DVA Apply Identity Delta.",)
    FUNCTION = "execute"
    REQUIRES = (("safetensors", "safetensors"),)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "delta_file": (latent_files(), {"tooltip":  # every .safetensors of the input / output folders
                           "An identity delta file: from the input folder, or from the output folder ([output])."}),
        }}

    @classmethod
    def IS_CHANGED(cls, delta_file):
        return input_fingerprint(delta_file)

    @classmethod
    def VALIDATE_INPUTS(cls, delta_file):
        return input_file_problem(delta_file)

    @classmethod
    def execute(cls, delta_file):
        from dva_model.edit.clip_edit import load_delta

        return (load_delta(input_path(delta_file)),)
