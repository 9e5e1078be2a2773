"""Make the authors' reference implementation importable on this machine, offline, without editing it.

The reference (gmkim-ai/Diffusion-Video-Autoencoders) targets Python 3.9, torch 1.12, Pillow 9, numpy
1.19 and PyTorch Lightning 1.6 on a CUDA machine. Everything here is a run-time patch applied in this
process only; the checkout given on the command line is imported as it is and never modified.

What is patched and why (none of it touches a numeric code path of the model or the sampler):
- ``pytorch_lightning``, ``pytorch_fid``, ``lpips``, ``lmdb``, ``pandas``: imported at module level by
  training / metric code that inference never calls. When a package is missing, a small stand-in module is
  registered. ``LightningModule`` becomes a plain ``nn.Module`` with ``save_hyperparameters``, ``device``
  and ``global_rank``, which is all ``LitModel`` / ``ClsModel`` use outside training.
- ``numpy.lib.function_base`` (removed in numpy 2): aliased so ``from numpy.lib.function_base import flip``
  keeps working.
- ``PIL.Image.ANTIALIAS`` (removed in Pillow 10): set to ``LANCZOS``, the filter it always named.
- ``torch.load``: the reference passes ``map_location='cuda'``; we force CPU. Reads of the three
  ``./pretrained_models/*`` encoder files (ArcFace IR-SE50, MobileNetV2 landmark net, BiSeNet) are answered
  with random weights of the right layout, built from the reference's own classes: the real weights cannot
  be downloaded here, and the checkpoint we load afterwards overwrites every one of these tensors anyway.
- ``torch.utils.model_zoo.load_url`` / ``torch.hub.load_state_dict_from_url``: BiSeNet's constructor
  downloads ImageNet ResNet18 weights; we answer that URL with random ResNet18 weights and refuse every
  other URL, so nothing here ever reaches the network.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import itertools
import os
import sys
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

RESNET18_URL_MARK = "resnet18"
IDNET_FILE = "model_ir_se50.pth"
LNDNET_FILE = "mobilenet_224_model_best_gdconv_external.pth.tar"
BGNET_FILE = "79999_iter.pth"
LANDMARK_OUTPUTS = 136  # 68 (x, y) points of the landmark regressor
PARSING_CLASSES = 19

# Functions of editing_classifier.py that are pure helpers (the rest of that file is a script that
# parses argv, needs CUDA and runs at import time, so it is never imported as a whole).
ALIGNMENT_HELPERS = (
    "l2_norm", "tensor2pil", "paste_image", "calc_alignment_coefficients", "get_landmark",
    "compute_transform", "crop_image",
)

_ORIGINAL_TORCH_LOAD = torch.load
_installed = False


class _LightningModuleStandIn(nn.Module):
    """The part of ``pytorch_lightning.LightningModule`` that inference code touches."""

    global_rank = 0

    def save_hyperparameters(self, *args, **kwargs):
        hparams = dict(args[0]) if args and isinstance(args[0], dict) else dict(kwargs)
        object.__setattr__(self, "hparams", hparams)

    @property
    def device(self) -> torch.device:
        first = next(itertools.chain(self.parameters(), self.buffers()), None)
        return first.device if first is not None else torch.device("cpu")


def _seed_everything(seed=None, workers=False):
    import random

    seed = 0 if seed is None else int(seed)
    os.environ["PL_GLOBAL_SEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return seed


class _Unavailable:
    """Placeholder for training-only classes; constructing one is an error, importing it is not."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError(f"{type(self).__name__} is a stand-in: this harness runs inference only")


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    module.__dict__["__parity_stand_in__"] = True
    return module


def _register_stand_ins() -> list[str]:
    """Register stand-in modules for every missing training-only dependency; return their names."""
    registered = []

    def missing(name: str) -> bool:
        return name not in sys.modules and importlib.util.find_spec(name) is None

    if missing("pytorch_lightning"):
        callbacks = _module(
            "pytorch_lightning.callbacks",
            ModelCheckpoint=type("ModelCheckpoint", (_Unavailable,), {}),
            LearningRateMonitor=type("LearningRateMonitor", (_Unavailable,), {}),
            Callback=type("Callback", (), {}),
        )
        callbacks.__all__ = ["ModelCheckpoint", "LearningRateMonitor", "Callback"]
        loggers = _module("pytorch_lightning.loggers",
                          TensorBoardLogger=type("TensorBoardLogger", (_Unavailable,), {}))
        lightning = _module(
            "pytorch_lightning", LightningModule=_LightningModuleStandIn, seed_everything=_seed_everything,
            Trainer=type("Trainer", (_Unavailable,), {}), callbacks=callbacks, loggers=loggers,
            __version__="1.6.1-parity-stand-in",
        )
        sys.modules.update({"pytorch_lightning": lightning, "pytorch_lightning.callbacks": callbacks,
                            "pytorch_lightning.loggers": loggers})
        registered.append("pytorch_lightning")
    if missing("pytorch_fid"):
        fid_score = _module("pytorch_fid.fid_score")
        sys.modules.update({"pytorch_fid": _module("pytorch_fid", fid_score=fid_score),
                            "pytorch_fid.fid_score": fid_score})
        registered.append("pytorch_fid")
    for name in ("lpips", "lmdb", "pandas"):
        if missing(name):
            sys.modules[name] = _module(name)
            registered.append(name)
    try:
        importlib.import_module("numpy.lib.function_base")
    except ImportError:
        sys.modules["numpy.lib.function_base"] = _module("numpy.lib.function_base", flip=np.flip)
        registered.append("numpy.lib.function_base")
    return registered


def _random_pretrained(name: str):
    """Random weights in the layout of one ``./pretrained_models`` file, from the reference's classes."""
    if name == IDNET_FILE:
        from model.model_irse import Backbone

        return Backbone(input_size=112, num_layers=50, drop_ratio=0.6, mode="ir_se").state_dict()
    if name == LNDNET_FILE:
        from model.basenet import MobileNet_GDConv

        # The released file is a DataParallel training checkpoint: {'state_dict': {'module.<key>': ...}}.
        net = MobileNet_GDConv(LANDMARK_OUTPUTS)
        return {"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}
    if name == BGNET_FILE:
        from model.seg_model_2 import BiSeNet

        return BiSeNet(PARSING_CLASSES).state_dict()
    raise KeyError(name)


def _patched_torch_load(f, map_location=None, *args, **kwargs):
    if isinstance(f, (str, os.PathLike)) and Path(f).name in (IDNET_FILE, LNDNET_FILE, BGNET_FILE):
        return _random_pretrained(Path(f).name)
    return _ORIGINAL_TORCH_LOAD(f, *args, map_location="cpu", **kwargs)


def _patched_load_url(url, *args, **kwargs):
    if RESNET18_URL_MARK in str(url):
        import torchvision

        return torchvision.models.resnet18(weights=None).state_dict()
    raise RuntimeError(f"the parity harness never downloads; the reference asked for {url}")


def install(reference_dir: str | os.PathLike) -> None:
    """Apply the library patches above and put ``reference_dir`` first on ``sys.path``."""
    global _installed
    reference_dir = Path(reference_dir).resolve()
    if not (reference_dir / "editing_classifier.py").is_file():
        raise ValueError(f"{reference_dir} is not a checkout of the DVA reference "
                         "(no editing_classifier.py); pass the folder that holds it")
    if str(reference_dir) not in sys.path:
        sys.path.insert(0, str(reference_dir))
    if _installed:
        return
    import PIL.Image

    if not hasattr(PIL.Image, "ANTIALIAS"):
        PIL.Image.ANTIALIAS = PIL.Image.LANCZOS
    import torch.hub as hub
    import torch.utils.model_zoo as model_zoo

    torch.load = _patched_torch_load
    hub.load_state_dict_from_url = _patched_load_url
    model_zoo.load_url = _patched_load_url
    _installed = True


def import_reference(reference_dir: str | os.PathLike) -> types.SimpleNamespace:
    """Import the reference modules the editing script uses; returns them in a namespace."""
    install(reference_dir)
    import torchvision  # noqa: F401  (imported first: it probes installed packages while importing)

    # Stand-ins live in sys.modules only while the reference imports, so nothing else mistakes them for
    # the real packages; the reference modules keep the names they bound.
    stand_ins = _register_stand_ins()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the reference prints while importing
            templates = importlib.import_module("templates")
            templates_cls = importlib.import_module("templates_cls")
            experiment = importlib.import_module("experiment")
            experiment_classifier = importlib.import_module("experiment_classifier")
    finally:
        for name in [m for m in sys.modules if getattr(sys.modules[m], "__parity_stand_in__", False)]:
            del sys.modules[name]
    return types.SimpleNamespace(
        stand_ins=stand_ins,
        templates=templates,
        templates_cls=templates_cls,
        experiment=experiment,
        experiment_classifier=experiment_classifier,
        dataset=importlib.import_module("dataset"),
        helpers=importlib.import_module("model.helpers"),
        unet_autoenc=importlib.import_module("model.unet_autoenc"),
        editing=load_editing_helpers(reference_dir),
    )


def load_editing_helpers(reference_dir: str | os.PathLike) -> types.SimpleNamespace:
    """The helper functions of ``editing_classifier.py`` (alignment, PNG conversion), without its script.

    The file's function definitions are compiled from the reference's own source and executed in a fresh
    namespace holding the modules they refer to; its module-level script is left out.
    """
    install(reference_dir)
    import PIL
    import PIL.Image
    import dlib
    import scipy
    import scipy.ndimage
    import skimage.io

    path = Path(reference_dir).resolve() / "editing_classifier.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    wanted = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in ALIGNMENT_HELPERS]
    found = {node.name for node in wanted}
    if found != set(ALIGNMENT_HELPERS):
        raise ValueError(f"{path} lacks {sorted(set(ALIGNMENT_HELPERS) - found)}: not the expected reference")
    namespace = {"np": np, "torch": torch, "PIL": PIL, "Image": PIL.Image, "dlib": dlib, "scipy": scipy,
                 "io": skimage.io}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), str(path), "exec"), namespace)
    return types.SimpleNamespace(**{name: namespace[name] for name in ALIGNMENT_HELPERS})
