"""Loader nodes: the DVA model (one resident copy per file, precision and device) and attribute directions."""

from ._host import DEVICES, PRECISION_CHOICES, load_dva_model, model_files, model_path, resolve_device, resolve_dtype
from ._host import with_release_names
from .types import CLASSIFIER, MODEL

CHECKPOINT_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth")
CLASSIFIER_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth")
STATS_SUFFIXES = (".pkl", ".pt", ".pth")
NO_STATS = "none"


def download_input(what: str):
    return ("BOOLEAN", {"default": False, "tooltip":
            f"When the chosen file is not in ComfyUI/models/dva, download {what} from the authors' public "
            "release first (several GB for the DVA; progress shows on this node). Off: nothing is downloaded."})


class DVAModelLoader:
    """Loads a DVA checkpoint once per process; every model-using node shares it (DVA_MODEL)."""

    CATEGORY = "DVA"
    DESCRIPTION = (
        "Loads a Diffusion Video Autoencoder (the UNet and its face encoders) from ComfyUI/models/dva: "
        "the released epoch=51-step=1000000.ckpt or a converted .safetensors. The model stays resident "
        "across nodes and queued runs; ComfyUI may offload it when another model needs the memory."
    )
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The loaded DVA model; connect it to every DVA node that takes a model.",)
    FUNCTION = "execute"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "checkpoint": (with_release_names(model_files(*CHECKPOINT_SUFFIXES), *CHECKPOINT_SUFFIXES), {
                "tooltip": "DVA checkpoint in ComfyUI/models/dva (released .ckpt or converted .safetensors); "
                           "`python -m dva_model download` fetches both."}),
            "precision": (list(PRECISION_CHOICES), {"default": "auto", "tooltip":
                "UNet weight precision; 'auto' picks bf16/fp16 on a GPU that runs them fast, fp32 on the CPU. "
                "GroupNorm and the face encoders always compute in fp32."}),
            "device": (list(DEVICES), {"default": "auto", "tooltip":
                "'auto' runs on ComfyUI's compute device (the GPU unless ComfyUI was started with --cpu)."}),
        }, "optional": {"download_if_missing": download_input("the released DVA and convert it")}}

    @classmethod
    def execute(cls, checkpoint, precision, device, download_if_missing=False):
        target = resolve_device(device)
        path = model_path(checkpoint, download=download_if_missing)
        return (load_dva_model(path, device=target, dtype=resolve_dtype(precision, target)),)


class DVAClassifierLoader:
    """Loads attribute directions: the released classifier last.ckpt or a DVA direction .safetensors."""

    CATEGORY = "DVA"
    DESCRIPTION = (
        "Loads the attribute classifier whose weight rows are the edit directions (the released "
        "diffusion_video_autoencoder_cls/last.ckpt, or a direction file made by train-direction) "
        "from ComfyUI/models/dva."
    )
    RETURN_TYPES = (CLASSIFIER,)
    RETURN_NAMES = ("classifier",)
    OUTPUT_TOOLTIPS = ("Attribute directions for DVA Attribute Edit.",)
    FUNCTION = "execute"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "classifier": (with_release_names(model_files(*CLASSIFIER_SUFFIXES), *CLASSIFIER_SUFFIXES), {
                "tooltip": "Classifier checkpoint (released last.ckpt) or direction .safetensors in models/dva."}),
            "latent_stats": ([NO_STATS] + with_release_names(model_files(*STATS_SUFFIXES), *STATS_SUFFIXES), {"default": NO_STATS, "tooltip":
                "The release's latent.pkl (identity mean/std); only needed when the classifier file lacks its "
                "own statistics (the released last.ckpt has them)."}),
        }, "optional": {"download_if_missing": download_input("the released classifier and latent.pkl")}}

    @classmethod
    def execute(cls, classifier, latent_stats, download_if_missing=False):
        from dva_model.edit.classifier import load_classifier

        path = model_path(classifier, download=download_if_missing)
        stats = None if latent_stats == NO_STATS else model_path(latent_stats, download=download_if_missing)
        return (load_classifier(path, latent_stats=stats),)
