"""Encoding nodes: DVAEncode (features + DDIM inversion -> DVA_LATENT) and saving/loading an encoding."""

import os

from ._host import input_file_problem, input_fingerprint, input_path, output_path, progress_callback, require_all
from .types import FACES, LATENT, MODEL

LATENT_SUFFIX = ".safetensors"
OUTPUT_TAG = " [output]"  # ComfyUI's annotation for a file in the output folder
MAX_STEPS = 1000
MAX_FRAMES_PER_CALL = 256
REQUIRES = (("safetensors", "safetensors"),)


class DVAEncode:
    """Per-frame identity and landmarks, then DDIM inversion of every crop with the clip's mean identity."""

    CATEGORY = "DVA"
    DESCRIPTION = (
        "Encodes the aligned crops: z_id (ArcFace) and z_lnd (landmarks) per frame, the clip identity "
        "(their mean), and x_T by deterministic DDIM inversion conditioned on it. This is the expensive "
        "step; ComfyUI keeps its result while only edit settings change, and DVA Save Latent stores it."
    )
    RETURN_TYPES = (LATENT,)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The clip's encoding: per-frame z_id, z_lnd and x_T, the identity and the step count.",)
    FUNCTION = "execute"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "The DVA model from DVA Model Loader."}),
            "faces": (FACES, {"tooltip": "Aligned crops from DVA Face Align."}),
            "steps": ("INT", {"default": 100, "min": 2, "max": MAX_STEPS, "step": 1, "tooltip":
                      "DDIM steps S of inversion and decoding (the release uses 1000; 100 is close and 10x "
                      "faster). Valid: the reference's respacings, e.g. 10, 20, 50, 100, 200, 1000."}),
            "frames_per_call": ("INT", {"default": 0, "min": 0, "max": MAX_FRAMES_PER_CALL, "step": 1, "tooltip":
                                "Frames per UNet call; 0 sizes the batch from free GPU memory (8 on the CPU)."}),
        }}

    @classmethod
    def execute(cls, model, faces, steps, frames_per_call):
        from dva_model.encoding import encode_clip

        batch, callback = model.frames_per_call(frames_per_call), progress_callback()
        dva = model.acquire(frames_per_call=batch)
        if faces.config.size != dva.image_size:
            raise ValueError(f"The model works on {dva.image_size}px crops but DVA Face Align made "
                             f"{faces.config.size}px ones; set its crop_size to {dva.image_size}.")
        names = [f"frame_{faces.indices[row]:06d}" for row in faces.face_rows]
        return (encode_clip(dva, faces.crops, steps=steps, batch_size=batch, model_id=model.model_id,
                            frame_names=names, stage_progress=lambda _stage: callback),)


class DVASaveLatent:
    """Writes an encoding to ComfyUI's output folder (safetensors) so a clip can be re-edited later."""

    CATEGORY = "DVA"
    DESCRIPTION = ("Saves an encoding (z_id, z_lnd, x_T, identity, steps, model) as .safetensors in the "
                   "output folder; DVA Load Latent reads it back and skips the inversion.")
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "execute"
    REQUIRES = REQUIRES

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "latent": (LATENT, {"tooltip": "The encoding to save."}),
            "filename_prefix": ("STRING", {"default": "dva/latent", "tooltip":
                                "File name prefix inside the output folder (may contain sub-folders)."}),
        }}

    @classmethod
    def execute(cls, latent, filename_prefix):
        require_all("DVA Save Latent", REQUIRES)
        from dva_model.formats.latent_io import save_latent

        path, name, subfolder = output_path(filename_prefix, LATENT_SUFFIX)
        save_latent(path, latent)
        return {"ui": {"files": [{"filename": name, "subfolder": subfolder, "type": "output"}]}}


class DVALoadLatent:
    """Reads an encoding saved by DVA Save Latent (or `python -m dva_model encode`)."""

    CATEGORY = "DVA"
    DESCRIPTION = ("Loads an encoding (.safetensors) from the input folder, or from the output folder "
                   "(entries marked [output]), so a clip can be edited again without inverting it.")
    RETURN_TYPES = (LATENT,)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The saved encoding.",)
    FUNCTION = "execute"
    REQUIRES = REQUIRES

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "latent_file": (latent_files(), {"tooltip":
                            "An encoding file: from the input folder, or from the output folder ([output])."}),
        }}

    @classmethod
    def IS_CHANGED(cls, latent_file):
        return input_fingerprint(latent_file)

    @classmethod
    def VALIDATE_INPUTS(cls, latent_file):
        return input_file_problem(latent_file)

    @classmethod
    def execute(cls, latent_file):
        require_all("DVA Load Latent", REQUIRES)
        from dva_model.formats.latent_io import load_latent

        return (load_latent(input_path(latent_file)),)


def latent_files() -> list:
    """Encodings in the input folder, then those under the output folder (annotated ``[output]``)."""
    import folder_paths

    from ._host import input_files

    names = input_files(LATENT_SUFFIX)
    root = folder_paths.get_output_directory()
    for folder, _, files in os.walk(root):
        for name in sorted(files):
            if name.endswith(LATENT_SUFFIX):
                relative = os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/")
                names.append(relative + OUTPUT_TAG)
    return names
