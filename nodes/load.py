"""Loader nodes: the DVA model (one resident copy per file, precision and device) and attribute directions."""

from comfy_api.v0_0_2 import io

from ._host import DEVICES, PRECISION_CHOICES, load_dva_model, model_files, model_path, resolve_device, resolve_dtype
from ._host import with_release_names
from .types import CATEGORY_MODEL, Classifier, Model

CHECKPOINT_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth")
CLASSIFIER_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth")
STATS_SUFFIXES = (".pkl", ".pt", ".pth")
NO_STATS = "none"


def release_choices(suffixes: tuple, *, kind: str, group: str) -> list:
    """A loader's combo options: the ``kind`` files with ``suffixes`` in models/dva plus download ``group``'s
    released files of that suffix not there yet."""
    return with_release_names(model_files(*suffixes, kind=kind), *suffixes, group=group)


def download_input(what: str):
    return io.Boolean.Input("download_if_missing", default=False, optional=True, tooltip=
                            f"When the chosen file is not in ComfyUI/models/dva, download {what} from the authors' "
                            "public release first (several GB for the DVA; progress shows on this node). Off: "
                            "nothing is downloaded.")


class DVAModelLoader(io.ComfyNode):
    """Loads a DVA checkpoint once per process; every model-using node shares it (DVA_MODEL)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        checkpoints = release_choices(CHECKPOINT_SUFFIXES, kind="dva", group="dva")
        return io.Schema(
            node_id="DVAModelLoader", display_name="DVA Model Loader", category=CATEGORY_MODEL,
            description=(
                "Loads a Diffusion Video Autoencoder (the UNet and its face encoders) from ComfyUI/models/dva: "
                "the released epoch=51-step=1000000.ckpt or a converted .safetensors. The model stays resident "
                "across nodes and queued runs; ComfyUI may offload it when another model needs the memory."),
            inputs=[
                io.Combo.Input("checkpoint", options=checkpoints, tooltip=
                               "DVA checkpoint in ComfyUI/models/dva (released .ckpt or converted .safetensors); "
                               "`python -m dva_model download` fetches both."),
                io.Combo.Input("precision", options=list(PRECISION_CHOICES), default="auto", tooltip=
                               "UNet weight precision; 'auto' picks bf16/fp16 on a GPU that runs them fast, fp32 on "
                               "the CPU. GroupNorm and the face encoders always compute in fp32."),
                io.Combo.Input("device", options=list(DEVICES), default="auto", tooltip=
                               "'auto' runs on ComfyUI's compute device (the GPU unless ComfyUI was started with --cpu)."),
                download_input("the released DVA and convert it"),
            ],
            outputs=[Model.Output(display_name="model",
                                  tooltip="The loaded DVA model; connect it to every DVA node that takes a model.")],
        )

    @classmethod
    def execute(cls, checkpoint, precision, device, download_if_missing=False) -> io.NodeOutput:
        target = resolve_device(device)
        path = model_path(checkpoint, download=download_if_missing)
        return io.NodeOutput(load_dva_model(path, device=target, dtype=resolve_dtype(precision, target)))


class DVAClassifierLoader(io.ComfyNode):
    """Loads attribute directions: the released classifier last.ckpt or a DVA direction .safetensors."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        classifiers = release_choices(CLASSIFIER_SUFFIXES, kind="classifier", group="classifier")
        stats = release_choices(STATS_SUFFIXES, kind="latent_stats", group="classifier")
        return io.Schema(
            node_id="DVAClassifierLoader", display_name="DVA Classifier Loader", category=CATEGORY_MODEL,
            description=(
                "Loads the attribute classifier whose weight rows are the edit directions (the released "
                "diffusion_video_autoencoder_cls/last.ckpt, or a direction file made by train-direction) "
                "from ComfyUI/models/dva."),
            inputs=[
                io.Combo.Input("classifier", options=classifiers, tooltip=
                               "Classifier checkpoint (released last.ckpt) or direction .safetensors in models/dva."),
                io.Combo.Input("latent_stats", options=[NO_STATS] + stats, default=NO_STATS,
                               tooltip="The release's latent.pkl (identity mean/std); only needed when the classifier "
                                       "file lacks its own statistics (the released last.ckpt has them)."),
                download_input("the released classifier and latent.pkl"),
            ],
            outputs=[Classifier.Output(display_name="classifier", tooltip="Attribute directions for DVA Attribute Edit.")],
        )

    @classmethod
    def execute(cls, classifier, latent_stats, download_if_missing=False) -> io.NodeOutput:
        from dva_model.edit.classifier import load_classifier

        path = model_path(classifier, download=download_if_missing)
        stats = None if latent_stats == NO_STATS else model_path(latent_stats, download=download_if_missing)
        return io.NodeOutput(load_classifier(path, latent_stats=stats))
