"""DDIMDecode: every frame's x_T decoded under the (edited) clip identity, as IMAGE crops."""

from comfy_api.v0_0_2 import io

from ._host import crops_to_image, progress_callback
from .encode import frames_per_call_input
from .types import CATEGORY_ENCODE, IdentityType, Latent, Model


class DVADDIMDecode(io.ComfyNode):
    """Deterministic DDIM decoding (eta 0) of each frame from its x_T, its landmarks and one identity."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DVADDIMDecode", display_name="DVA DDIM Decode", category=CATEGORY_ENCODE,
            description=(
                "Decodes every frame of an encoding with the given identity: z_face = Linear([identity ; the "
                "frame's landmarks]) conditions the UNet, starting from the frame's x_T, with the encoding's "
                "step count. With the unedited identity this reproduces the aligned input crops."),
            inputs=[
                Model.Input("model", tooltip="The DVA model the encoding was made with."),
                Latent.Input("latent", tooltip="The clip's encoding (x_T and landmarks per frame)."),
                IdentityType.Input("identity", tooltip="The identity to decode with (edited or not)."),
                frames_per_call_input(),
            ],
            outputs=[io.Image.Output(display_name="crops", tooltip=
                                     "Decoded aligned face crops, [N, S, S, 3] in 0..1 (S: the model's image size).")],
        )

    @classmethod
    def execute(cls, model, latent, identity, frames_per_call) -> io.NodeOutput:
        check_same_model(model, latent)
        batch = model.frames_per_call(frames_per_call)
        crops = model.acquire(frames_per_call=batch).decode(
            latent.x_T, identity.edited(), latent.z_lnd, steps=latent.steps, batch_size=batch,
            callback=progress_callback())
        return io.NodeOutput(crops_to_image(crops))


def check_same_model(model, latent) -> None:
    """Refuse an encoding made with another model file (its x_T would decode to noise)."""
    if latent.model_id and model.model_id and latent.model_id != model.model_id:
        raise ValueError(
            f"This encoding was made with the model {latent.model_id!r} but the connected model is "
            f"{model.model_id!r}; connect the loader of the model the clip was encoded with."
        )
