"""Loader nodes: the DVA model (one resident copy per file, precision and device) and attribute directions."""

from comfy_api.v0_0_2 import io

from ._host import DEVICES, PRECISIONS, load_dva_model, model_files, model_path, resolve_device, resolve_dtype
from .types import CATEGORY_MODEL, Classifier, Model

CHECKPOINT_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth")
CLASSIFIER_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth")
STATS_SUFFIXES = (".pkl", ".pt", ".pth")
NO_STATS = "none"


class DVAModelLoader(io.ComfyNode):
    """Loads a DVA checkpoint once per process; every model-using node shares it (DVA_MODEL)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DVAModelLoader", display_name="DVA Model Loader", category=CATEGORY_MODEL,
            description=(
                "Loads a Diffusion Video Autoencoder (the UNet and its face encoders) from ComfyUI/models/dva: "
                "the released epoch=51-step=1000000.ckpt or a converted .safetensors. The model stays resident "
                "across nodes and queued runs; ComfyUI may offload it when another model needs the memory."),
            inputs=[
                io.Combo.Input("checkpoint", options=model_files(*CHECKPOINT_SUFFIXES, kind="dva"), tooltip=
                               "DVA checkpoint in ComfyUI/models/dva (released .ckpt or converted .safetensors)."),
                io.Combo.Input("precision", options=list(PRECISIONS), default="auto", tooltip=
                               "UNet weight precision; 'auto' picks bf16/fp16 on a GPU that runs them fast, fp32 on "
                               "the CPU. GroupNorm and the face encoders always compute in fp32."),
                io.Combo.Input("device", options=list(DEVICES), default="auto", tooltip=
                               "'auto' runs on ComfyUI's compute device (the GPU unless ComfyUI was started with --cpu)."),
            ],
            outputs=[Model.Output(display_name="model",
                                  tooltip="The loaded DVA model; connect it to every DVA node that takes a model.")],
        )

    @classmethod
    def execute(cls, checkpoint, precision, device) -> io.NodeOutput:
        target = resolve_device(device)
        return io.NodeOutput(load_dva_model(model_path(checkpoint), device=target,
                                            dtype=resolve_dtype(precision, target)))


class DVAClassifierLoader(io.ComfyNode):
    """Loads attribute directions: the released classifier last.ckpt or a DVA direction .safetensors."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DVAClassifierLoader", display_name="DVA Classifier Loader", category=CATEGORY_MODEL,
            description=(
                "Loads the attribute classifier whose weight rows are the edit directions (the released "
                "diffusion_video_autoencoder_cls/last.ckpt, or a direction file made by train-direction) "
                "from ComfyUI/models/dva."),
            inputs=[
                io.Combo.Input("classifier", options=model_files(*CLASSIFIER_SUFFIXES, kind="classifier"), tooltip=
                               "Classifier checkpoint (released last.ckpt) or direction .safetensors in models/dva."),
                io.Combo.Input("latent_stats", options=[NO_STATS] + model_files(*STATS_SUFFIXES, kind="latent_stats"), default=NO_STATS,
                               tooltip="The release's latent.pkl (identity mean/std); only needed when the classifier "
                                       "file lacks its own statistics (the released last.ckpt has them)."),
            ],
            outputs=[Classifier.Output(display_name="classifier", tooltip="Attribute directions for DVA Attribute Edit.")],
        )

    @classmethod
    def execute(cls, classifier, latent_stats) -> io.NodeOutput:
        from dva_model.edit.classifier import load_classifier

        stats = None if latent_stats == NO_STATS else model_path(latent_stats)
        return io.NodeOutput(load_classifier(model_path(classifier), latent_stats=stats))
