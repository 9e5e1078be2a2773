"""Encoding nodes: DVAEncode (features + DDIM inversion -> DVA_LATENT) and saving/loading an encoding."""

from comfy_api.v0_0_2 import io

from ._host import input_file_problem, input_fingerprint, input_path, progress_callback, require_all
from .saved import SUFFIX, load_schema, save_schema, save_to_output
from .types import CATEGORY_ENCODE, Faces, Latent, Model

MAX_STEPS = 1000
MAX_FRAMES_PER_CALL = 256
REQUIRES = (("safetensors", "safetensors"),)


def frames_per_call_input():
    return io.Int.Input("frames_per_call", default=0, min=0, max=MAX_FRAMES_PER_CALL, step=1, tooltip=
                        "Frames per UNet call; 0 sizes the batch from free GPU memory (8 on the CPU).")


class DVAEncode(io.ComfyNode):
    """Per-frame identity and landmarks, then DDIM inversion of every crop with the clip's mean identity."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DVAEncode", display_name="DVA Encode", category=CATEGORY_ENCODE,
            description=(
                "Encodes the aligned crops: z_id (ArcFace) and z_lnd (landmarks) per frame, the clip identity "
                "(their mean), and x_T by deterministic DDIM inversion conditioned on it. This is the expensive "
                "step; ComfyUI keeps its result while only edit settings change, and DVA Save Latent stores it."),
            inputs=[
                Model.Input("model", tooltip="The DVA model from DVA Model Loader."),
                Faces.Input("faces", tooltip="Aligned crops from DVA Face Align."),
                io.Int.Input("steps", default=100, min=2, max=MAX_STEPS, step=1, tooltip=
                             "DDIM steps S of inversion and decoding (the release uses 1000; 100 is close and 10x "
                             "faster). Valid: the reference's respacings, e.g. 10, 20, 50, 100, 200, 1000."),
                frames_per_call_input(),
            ],
            outputs=[Latent.Output(display_name="latent", tooltip=
                                   "The clip's encoding: per-frame z_id, z_lnd and x_T, the identity and the step count.")],
        )

    @classmethod
    def validate_inputs(cls, steps=None, **_):
        """A step count the release's respacing cannot make is refused before the graph runs (HTTP 400); a
        count that arrives through a link is checked when the node runs."""
        from dva_model.diffusion.schedule import respaced_timesteps

        if steps is None:
            return True
        try:
            respaced_timesteps(int(steps))
        except (TypeError, ValueError) as error:
            return str(error)
        return True

    @classmethod
    def execute(cls, model, faces, steps, frames_per_call) -> io.NodeOutput:
        from dva_model.diffusion.schedule import respaced_timesteps
        from dva_model.encoding import encode_clip
        from dva_model.progress import one_bar

        respaced_timesteps(steps)  # also when called directly: one sentence before any network runs

        batch, callback = model.frames_per_call(frames_per_call), progress_callback()
        dva = model.acquire(frames_per_call=batch)
        if faces.config.size != dva.image_size:
            raise ValueError(f"The model works on {dva.image_size}px crops but DVA Face Align made "
                             f"{faces.config.size}px ones; set its crop_size to {dva.image_size}.")
        # One bar for the whole node: a unit per frame encoded, then per frame and inversion step.
        frames = int(faces.has_face.sum())
        bar = one_bar(callback, {"encode": frames, "invert": frames * (steps - 1)})
        if not hasattr(faces, "crops"):  # VIDEO-tracked faces: stream into a latent file
            return io.NodeOutput(encode_to_file(dva, faces, steps, batch, model.model_id, bar))
        names = [f"frame_{faces.indices[row]:06d}" for row in faces.face_rows]
        return io.NodeOutput(encode_clip(dva, faces.crops, steps=steps, batch_size=batch, model_id=model.model_id,
                                         frame_names=names, stage_progress=bar))


def encode_to_file(dva, faces, steps, batch, model_id, stage_progress):
    """The clip's crops, features and x_T in a latent file under ComfyUI's temp folder, by path."""
    from dva_model.formats.latent_io import StoredLatent
    from dva_model.pipeline import encode_to_latent_file

    from ._host import temp_file

    path = temp_file("latent", SUFFIX)
    file = encode_to_latent_file(faces.info.path, faces, dva, path, steps=steps, selection=faces.selection,
                                 batch_size=batch, model_id=model_id, stage_progress=stage_progress)
    file.close()
    return StoredLatent(path)


class DVASaveLatent(io.ComfyNode):
    """Writes an encoding to ComfyUI's output folder (safetensors) so a clip can be re-edited later."""

    REQUIRES = REQUIRES

    @classmethod
    def define_schema(cls) -> io.Schema:
        return save_schema(
            node_id="DVASaveLatent", display_name="DVA Save Latent", category=CATEGORY_ENCODE,
            description=("Saves an encoding (z_id, z_lnd, x_T, identity, steps, model) as .safetensors in the "
                         "output folder; DVA Load Latent reads it back and skips the inversion."),
            value=Latent.Input("latent", tooltip="The encoding to save."), default_prefix="dva/latent",
        )

    @classmethod
    def execute(cls, latent, filename_prefix) -> io.NodeOutput:
        require_all("DVA Save Latent", REQUIRES)
        from dva_model.formats.latent_io import save_latent

        return io.NodeOutput(ui=save_to_output(filename_prefix, latent, save_latent))


class DVALoadLatent(io.ComfyNode):
    """Reads an encoding saved by DVA Save Latent (or `python -m dva_model encode`)."""

    REQUIRES = REQUIRES

    @classmethod
    def define_schema(cls) -> io.Schema:
        return load_schema(
            node_id="DVALoadLatent", display_name="DVA Load Latent", category=CATEGORY_ENCODE,
            description=("Loads an encoding (.safetensors) from the input folder, or from the output folder "
                         "(entries marked [output]), so a clip can be edited again without inverting it."),
            file_input="latent_file", kind="latent",
            tooltip="An encoding file: from the input folder, or saved under output/dva/ ([output]).",
            output=Latent.Output(display_name="latent", tooltip="The saved encoding."),
        )

    @classmethod
    def fingerprint_inputs(cls, latent_file):
        return input_fingerprint(latent_file)

    @classmethod
    def validate_inputs(cls, latent_file):
        return input_file_problem(latent_file)

    @classmethod
    def execute(cls, latent_file) -> io.NodeOutput:
        require_all("DVA Load Latent", REQUIRES)
        from dva_model.formats.latent_io import load_latent

        return io.NodeOutput(load_latent(input_path(latent_file)))

