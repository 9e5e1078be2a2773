"""DDIMDecode: every frame's x_T decoded under the (edited) clip identity, as IMAGE crops."""

from ._host import crops_to_image, progress_callback
from .types import IDENTITY, LATENT, MODEL

MAX_FRAMES_PER_CALL = 256


class DVADDIMDecode:
    """Deterministic DDIM decoding (eta 0) of each frame from its x_T, its landmarks and one identity."""

    CATEGORY = "DVA"
    DESCRIPTION = (
        "Decodes every frame of an encoding with the given identity: z_face = Linear([identity ; the "
        "frame's landmarks]) conditions the UNet, starting from the frame's x_T, with the encoding's "
        "step count. With the unedited identity this reproduces the aligned input crops."
    )
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("crops",)
    OUTPUT_TOOLTIPS = ("Decoded aligned face crops, [N, S, S, 3] in 0..1 (S: the model's image size).",)
    FUNCTION = "execute"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "The DVA model the encoding was made with."}),
            "latent": (LATENT, {"tooltip": "The clip's encoding (x_T and landmarks per frame)."}),
            "identity": (IDENTITY, {"tooltip": "The identity to decode with (edited or not)."}),
            "frames_per_call": ("INT", {"default": 0, "min": 0, "max": MAX_FRAMES_PER_CALL, "step": 1, "tooltip":
                                "Frames per UNet call; 0 sizes the batch from free GPU memory (8 on the CPU)."}),
        }}

    @classmethod
    def execute(cls, model, latent, identity, frames_per_call):
        check_same_model(model, latent)
        batch = model.frames_per_call(frames_per_call)
        crops = model.acquire(frames_per_call=batch).decode(
            latent.x_T, identity.edited(), latent.z_lnd, steps=latent.steps, batch_size=batch,
            callback=progress_callback())
        return (crops_to_image(crops),)


def check_same_model(model, latent) -> None:
    """Refuse an encoding made with another model file (its x_T would decode to noise)."""
    if latent.model_id and model.model_id and latent.model_id != model.model_id:
        raise ValueError(
            f"This encoding was made with the model {latent.model_id!r} but the connected model is "
            f"{model.model_id!r}; connect the loader of the model the clip was encoded with."
        )
