"""Text-driven identity edits (the published CLIP edit): CLIP loader, the edit, and identity-delta files.

DVA_CLIP carries a ``nodes._host.ModelHandle`` around ``dva_model.edit.clip_loss.ClipDirectionalLoss``;
DVA_IDENTITY_DELTA a ``dva_model.edit.identity.IdentityDelta``. A delta always acts on the identity's base,
before the attribute edits chained onto it (whatever the node order): ``compose_identity_edits``'s order.
"""

import torch
from comfy_api.v0_0_2 import io

from ._host import DEVICES, HandleCache, ModelHandle, input_file_problem, input_fingerprint, input_path, model_files
from ._host import model_path, progress_callback, require_all, resolve_device
from .edit import NORMS, norm_input
from .saved import load_schema, save_schema, save_to_output
from .types import CATEGORY_EDIT, CATEGORY_MODEL, Clip, Delta, Faces, IdentityType, Latent, Model

CACHED_WEIGHTS = "OpenAI ViT-B/16 from the local CLIP cache"
CLIP_SUFFIXES = (".pt", ".safetensors", ".bin")
REQUIRES = (("open_clip", "open-clip-torch"), ("safetensors", "safetensors"))
MAX_ITERATIONS = 20000
MAX_WEIGHT = 100.0
MAX_SCALE = 5.0
MAX_FRAME = 1 << 20
TRAJECTORY_BATCH = 5  # the edit's one UNet call per iteration holds the 5 trajectory states

_clips = HandleCache(1)  # keep one CLIP resident at most


def _scale_input():
    return io.Float.Input("scale", default=0.5, min=-MAX_SCALE, max=MAX_SCALE, step=0.01, tooltip=
                          "How strongly to apply the learnt delta: z_id + scale * delta (the README's beard used "
                          "0.5; negative values push the other way).")


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


class DVACLIPLoader(io.ComfyNode):
    """Loads OpenAI's CLIP ViT-B/16 for text-driven edits (downloads only with download_if_missing)."""

    REQUIRES = REQUIRES

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DVACLIPLoader", display_name="DVA CLIP Loader", category=CATEGORY_MODEL,
            description=("Loads the CLIP model of the published text-driven edit: OpenAI's ViT-B/16 from the "
                         "local CLIP cache, or a ViT-B-16.pt / open_clip .safetensors file from ComfyUI/models/dva."),
            inputs=[
                io.Combo.Input("weights", options=[CACHED_WEIGHTS] + model_files(*CLIP_SUFFIXES, kind="clip"),
                               default=CACHED_WEIGHTS, tooltip=
                               "OpenAI's ViT-B-16.pt (as cached by the clip / open_clip packages), or such a file "
                               "placed in models/dva."),
                io.Combo.Input("device", options=list(DEVICES), default="auto",
                               tooltip="'auto' runs on ComfyUI's compute device."),
                io.Boolean.Input("download_if_missing", default=False, optional=True, tooltip=
                                 "With the local-cache choice and no cached copy: download OpenAI's ViT-B/16 (about "
                                 "600 MB) through open_clip into its cache first. Off: nothing is downloaded."),
            ],
            outputs=[Clip.Output(display_name="clip", tooltip="CLIP for DVA CLIP Edit.")],
        )

    @classmethod
    def execute(cls, weights, device, download_if_missing=False) -> io.NodeOutput:
        require_all("DVA CLIP Loader", REQUIRES)
        return io.NodeOutput(load_clip_handle(weights, resolve_device(device), download=download_if_missing))


class DVACLIPEdit(io.ComfyNode):
    """Learns an identity delta from a text edit on one reference frame (DVA Apply Identity Delta applies it)."""

    REQUIRES = REQUIRES

    @classmethod
    def define_schema(cls) -> io.Schema:
        weight = {"min": 0.0, "max": MAX_WEIGHT, "step": 0.1}
        return io.Schema(
            node_id="DVACLIPEdit", display_name="DVA CLIP Edit", category=CATEGORY_EDIT,
            description=(
                "The published CLIP edit: optimises the reference frame's identity so that one DDIM step of its "
                "5-step trajectory moves along the CLIP direction from source_text to target_text, keeping the "
                "identity (ArcFace) and the face region (masked L1) close. 2000 iterations as published; each is "
                "one batched UNet call. The learnt delta goes to DVA Apply Identity Delta, whose scale and norm "
                "can change without re-running the optimisation."),
            inputs=[
                Model.Input("model", tooltip="The DVA model the clip was encoded with."),
                Clip.Input("clip", tooltip="CLIP from DVA CLIP Loader."),
                Latent.Input("latent", tooltip="The clip's encoding (the reference frame's features and x_T)."),
                io.String.Input("source_text", default="face", tooltip="Neutral description, e.g. 'face'."),
                io.String.Input("target_text", default="face with beard", tooltip="The edit, e.g. 'face with beard'."),
                io.Int.Input("reference_frame", default=0, min=0, max=MAX_FRAME, step=1, tooltip=
                             "Frame (among those with a face) the edit is learnt on; the release uses 0."),
                io.Int.Input("iterations", default=2000, min=1, max=MAX_ITERATIONS, step=1,
                             tooltip="Adam iterations (2000 as published)."),
                io.Float.Input("learning_rate", default=0.002, min=1e-5, max=1.0, step=0.0001,
                               tooltip="Adam learning rate (0.002 as published)."),
                io.Float.Input("clip_weight", default=3.0, **weight, tooltip="Weight of the CLIP loss (README 3)."),
                io.Float.Input("identity_weight", default=1.0, **weight, tooltip=
                               "Weight of 1 - cos(edited, original identity) (README 1; the paper's beard 1)."),
                io.Float.Input("l1_weight", default=5.0, **weight,
                               tooltip="Weight of the L1 change inside the face mask (README 5)."),
                Faces.Input("faces", optional=True, tooltip=
                            "The aligned crops the latent was encoded from: the reference is then the real crop, as "
                            "released, instead of its reconstruction."),
            ],
            outputs=[Delta.Output(display_name="delta", tooltip=
                                  "The learnt delta: apply it with DVA Apply Identity Delta (any clip), save it with "
                                  "DVA Save Identity Delta.")],
        )

    @classmethod
    def execute(cls, model, clip, latent, source_text, target_text, reference_frame, iterations,
                learning_rate, clip_weight, identity_weight, l1_weight, faces=None) -> io.NodeOutput:
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
        return io.NodeOutput(optimise_delta(dva, loss, reference, config=config, callback=callback).delta)


def apply_to_identity(identity, delta, scale: float, norm: str):
    """A new DVA_IDENTITY with the delta chained on; it acts before every attribute edit (whatever the order)."""
    from dva_model.edit.identity import DeltaEdit

    return identity.with_edit(DeltaEdit(delta=delta, scale=float(scale), norm=NORMS[norm]))


class DVAApplyIdentityDelta(io.ComfyNode):
    """Applies an identity delta (just learnt, or loaded) to a clip's identity with a scale and a norm."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DVAApplyIdentityDelta", display_name="DVA Apply Identity Delta", category=CATEGORY_EDIT,
            description=("Applies an identity delta (from DVA CLIP Edit or DVA Load Identity Delta) to an identity: "
                         "z_id_edit = l2n(z_id + scale * delta), as published. Works on any clip; changing the "
                         "scale or norm never re-runs the CLIP optimisation."),
            inputs=[
                IdentityType.Input("identity", tooltip="The identity to edit."),
                Delta.Input("delta", tooltip="An identity delta learnt by DVA CLIP Edit."),
                _scale_input(),
                norm_input("'keep': the edited identity keeps the input identity's length, so scale 0 reproduces "
                           "the input exactly. 'unit': the release's unit-length result, l2n(z_id + scale * delta)."),
            ],
            outputs=[IdentityType.Output(display_name="identity", tooltip=
                                         "The edited identity; chain attribute edits or connect to DDIM Decode.")],
        )

    @classmethod
    def execute(cls, identity, delta, scale, norm) -> io.NodeOutput:
        return io.NodeOutput(apply_to_identity(identity, delta, scale, norm))


class DVASaveIdentityDelta(io.ComfyNode):
    """Writes an identity delta to the output folder, with the loss it reached."""

    REQUIRES = (("safetensors", "safetensors"),)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return save_schema(
            node_id="DVASaveIdentityDelta", display_name="DVA Save Identity Delta", category=CATEGORY_EDIT,
            description=("Saves an identity delta (.safetensors with its texts and settings) in the output folder; "
                         "DVA Load Identity Delta and `python -m dva_model` read it back."),
            value=Delta.Input("delta", tooltip="The delta to save."), default_prefix="dva/clip_delta",
        )

    @classmethod
    def execute(cls, delta, filename_prefix) -> io.NodeOutput:
        from dva_model.edit.clip_edit import save_delta

        files = save_to_output(filename_prefix, delta, save_delta)
        info = dict(delta.info)
        summary = f"{delta.source_text!r} -> {delta.target_text!r}"
        if "loss_start" in info:
            summary += f": loss {info['loss_start']:.4f} -> {info['loss_end']:.4f}"
        return io.NodeOutput(ui={**files, "text": [summary]})


class DVALoadIdentityDelta(io.ComfyNode):
    """Reads an identity delta saved by DVA Save Identity Delta or `python -m dva_model clip-edit`."""

    REQUIRES = (("safetensors", "safetensors"),)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return load_schema(
            node_id="DVALoadIdentityDelta", display_name="DVA Load Identity Delta", category=CATEGORY_EDIT,
            description=("Loads an identity delta (.safetensors) from the input folder, or from the output folder "
                         "(entries marked [output])."),
            file_input="delta_file", kind="delta",
            tooltip="An identity delta file: from the input folder, or saved under output/dva/ ([output]).",
            output=Delta.Output(display_name="delta", tooltip="The saved delta; connect to DVA Apply Identity Delta."),
        )

    @classmethod
    def fingerprint_inputs(cls, delta_file):
        return input_fingerprint(delta_file)

    @classmethod
    def validate_inputs(cls, delta_file):
        return input_file_problem(delta_file)

    @classmethod
    def execute(cls, delta_file) -> io.NodeOutput:
        from dva_model.edit.clip_edit import load_delta

        return io.NodeOutput(load_delta(input_path(delta_file)))
