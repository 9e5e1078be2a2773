"""Loader nodes: the DVA model (one resident copy per file, precision and device) and attribute directions."""

from ._host import DEVICES, PRECISION_CHOICES, load_dva_model, model_files, model_path, resolve_device, resolve_dtype
from .types import CLASSIFIER, MODEL

CHECKPOINT_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth")
CLASSIFIER_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth")
STATS_SUFFIXES = (".pkl", ".pt", ".pth")
NO_STATS = "none"


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
            "checkpoint": (model_files(*CHECKPOINT_SUFFIXES), {
                "tooltip": "DVA checkpoint in ComfyUI/models/dva (released .ckpt or converted .safetensors)."}),
            "precision": (list(PRECISION_CHOICES), {"default": "auto", "tooltip":
                "UNet weight precision; 'auto' picks bf16/fp16 on a GPU that runs them fast, fp32 on the CPU. "
                "GroupNorm and the face encoders always compute in fp32."}),
            "device": (list(DEVICES), {"default": "auto", "tooltip":
                "'auto' runs on ComfyUI's compute device (the GPU unless ComfyUI was started with --cpu)."}),
        }}

    @classmethod
    def execute(cls, checkpoint, precision, device):
        target = resolve_device(device)
        return (load_dva_model(model_path(checkpoint), device=target, dtype=resolve_dtype(precision, target)),)


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
            "classifier": (model_files(*CLASSIFIER_SUFFIXES), {
                "tooltip": "Classifier checkpoint (released last.ckpt) or direction .safetensors in models/dva."}),
            "latent_stats": ([NO_STATS] + model_files(*STATS_SUFFIXES), {"default": NO_STATS, "tooltip":
                "The release's latent.pkl (identity mean/std); only needed when the classifier file lacks its "
                "own statistics (the released last.ckpt has them)."}),
        }}

    @classmethod
    def execute(cls, classifier, latent_stats):
        from dva_model.edit.classifier import load_classifier

        stats = None if latent_stats == NO_STATS else model_path(latent_stats)
        return (load_classifier(model_path(classifier), latent_stats=stats),)
