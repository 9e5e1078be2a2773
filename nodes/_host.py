"""Everything the nodes need from ComfyUI itself, in one place.

ComfyUI's modules (``folder_paths``, ``comfy.utils``, ``comfy.model_management``,
``comfy.model_patcher``) are imported inside the functions that use them, so the node modules import
without a ComfyUI host (tests inject small stand-ins into ``sys.modules``).

Model residency: ``load_dva_model`` keeps one ``DVAModel`` per (file, precision, device) in a small
process-wide cache and wraps it in a ComfyUI ``ModelPatcher``. Every node that runs the model first
calls ``ModelHandle.acquire()``, which asks ``comfy.model_management.load_models_gpu`` to make it
resident (fully loaded: the library's modules are plain ``torch.nn`` modules, not ComfyUI's
cast-on-demand ops, so they must sit on one device). Between nodes and between queued runs the model
stays on the GPU; when another model needs the memory, ComfyUI offloads ours to the offload device
(CPU), and the next ``acquire()`` moves it back.
"""

import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Tuple

import torch

from dva_model.constants import PRECISIONS

log = logging.getLogger(__name__)

MODEL_FOLDER = "dva"
MODEL_EXTENSIONS = (".ckpt", ".safetensors", ".pt", ".pth", ".pkl", ".dat", ".tar")
# How many loaded DVA models the process keeps (each is ~1 GB of host memory at full size).
MODEL_CACHE_SIZE = 2
# Estimated activation memory of one frame in one UNet call at 256x256 (eager, 16-bit), asked of
# ComfyUI's memory manager so that it frees room for a batch before we run it (eager PyTorch).
UNET_BYTES_PER_FRAME = 1536 * 1024 * 1024
MAX_AUTO_BATCH = 64

AUTO = "auto"
PRECISION_CHOICES = (AUTO, *PRECISIONS)  # "auto" asks ComfyUI which 16-bit type the device runs fast
DEVICES = (AUTO, "cpu")


class MissingDependency(RuntimeError):
    """An optional package one node needs is not installed."""


def require(module: str, *, package: str, node: str):
    """Import optional ``module`` for ``node`` or raise one sentence naming the package to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingDependency(
            f"{node} needs the Python package {package!r}, which is not installed ({error}); "
            f"install it into ComfyUI's environment with: pip install {package}"
        ) from None


def require_all(node: str, requirements) -> None:
    """``require`` each (module, pip package) pair of ``requirements`` for ``node``."""
    for module, package in requirements:
        require(module, package=package, node=node)


def missing_packages(requirements) -> list:
    """Pip names of the (module, package) pairs whose module cannot be found (nothing is imported)."""
    import importlib.util

    return [package for module, package in requirements if importlib.util.find_spec(module) is None]


# ---------------------------------------------------------------------------------------------
# Model files


def register_model_folder() -> None:
    """Register ComfyUI/models/dva with ``folder_paths`` (extra_model_paths.yaml may add more paths)."""
    try:
        import folder_paths
    except ImportError:  # not running inside ComfyUI
        return
    default = os.path.join(folder_paths.models_dir, MODEL_FOLDER)
    if MODEL_FOLDER in folder_paths.folder_names_and_paths:
        paths, extensions = folder_paths.folder_names_and_paths[MODEL_FOLDER]
        if default not in paths:
            paths.append(default)
        extensions.update(MODEL_EXTENSIONS)
    else:
        folder_paths.folder_names_and_paths[MODEL_FOLDER] = ([default], set(MODEL_EXTENSIONS))


def model_files(*suffixes: str, kind: Optional[str] = None) -> list:
    """File names under models/dva (relative, as ComfyUI lists them) ending with one of ``suffixes``.

    With ``kind`` (a ``dva_model.formats.sniff.ModelKind``), only files of that kind, or whose kind a
    header peek cannot tell, are listed: the checkpoint list shows no classifier and the reverse.
    """
    import folder_paths

    register_model_folder()
    names = sorted(n for n in folder_paths.get_filename_list(MODEL_FOLDER) if not suffixes or n.lower().endswith(suffixes))
    if kind is None:
        return names
    return [n for n in names if file_kind(folder_paths.get_full_path(MODEL_FOLDER, n)) in (kind, "unknown")]


_kinds: dict = {}  # (path, size, mtime) -> kind: each file is peeked at once, not on every /object_info


def file_kind(path: Optional[str]) -> str:
    """``dva_model.formats.sniff.model_kind`` of ``path``, remembered per (path, size, mtime)."""
    from dva_model.formats.sniff import model_kind

    if path is None:
        return "unknown"
    try:
        stat = os.stat(path)
    except OSError:
        return "unknown"
    key = (path, stat.st_size, stat.st_mtime_ns)
    if key not in _kinds:
        _kinds[key] = model_kind(path)
    return _kinds[key]


def model_path(name: str, *, download: bool = False) -> Path:
    """Absolute path of models/dva file ``name``, or one sentence saying how to get it.

    download: fetch a released file that is missing into ComfyUI/models/dva first (the loaders'
    "download_if_missing" option; never without it).
    """
    import folder_paths
    from dva_model.formats.release import release_file_for

    register_model_folder()
    path = folder_paths.get_full_path(MODEL_FOLDER, name)
    group = release_file_for(name)
    if path is None and download and group is not None:
        download_release(group)
        path = folder_paths.get_full_path(MODEL_FOLDER, name)
    if path is not None:
        return Path(path)
    folders = ", ".join(folder_paths.get_folder_paths(MODEL_FOLDER))
    if group is None:
        raise FileNotFoundError(f"The model file {name!r} is not in ComfyUI's models/dva folder ({folders}); "
                                "put it there (see the README for where it comes from) and refresh.")
    raise FileNotFoundError(
        f"The model file {name!r} is not in ComfyUI's models/dva folder ({folders}); turn on download_if_missing "
        f"in this loader or run `python -m dva_model download --what {group} --to {download_folder()}`."
    )


def download_folder() -> str:
    """Where the loaders download to: ComfyUI/models/dva."""
    import folder_paths

    return os.path.join(folder_paths.models_dir, MODEL_FOLDER)


def download_release(group: str) -> None:
    """Fetch released ``group`` ("dva", "classifier") into ComfyUI/models/dva, with a progress bar."""
    from dva_model.formats.release import fetch_release

    log.info("ComfyUI-DVA: downloading the released %s files into %s", group, download_folder())
    fetch_release(Path(download_folder()), (group,), progress=lambda name: progress_callback())


def with_release_names(names: list, *suffixes: str, group: str) -> list:
    """``names`` plus the released files of download ``group`` (with ``suffixes``) not there yet, so that a
    loader can offer them for download_if_missing and a workflow naming them validates before they exist."""
    from dva_model.formats.release import known_names, release_file_for

    missing = [name for name in known_names() if name.lower().endswith(suffixes) and name not in names
               and release_file_for(name) == group]
    return sorted(set(names) | set(missing))


def input_files(*suffixes: str) -> list:
    """Files in ComfyUI's input folder (where uploads go) ending with one of ``suffixes``."""
    import folder_paths

    folder = folder_paths.get_input_directory()
    if not os.path.isdir(folder):
        return []
    names = [n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n))]
    return sorted(n for n in names if n.lower().endswith(suffixes))


def temp_file(stem: str, suffix: str) -> Path:
    """A new, unique file name under ComfyUI's temp folder (``dva/``) for a file-backed wire (an encoding,
    an edited video); ComfyUI empties that folder when it starts."""
    import uuid

    import folder_paths

    folder = Path(folder_paths.get_temp_directory()) / "dva"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{stem}_{uuid.uuid4().hex[:12]}{suffix}"


def input_path(name: str) -> Path:
    """Absolute path of an input-folder file (``name`` may carry ComfyUI's ``[input]`` annotation)."""
    import folder_paths

    path = folder_paths.get_annotated_filepath(name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"The file {name!r} is not in ComfyUI's input folder; upload it first.")
    return Path(path)


def input_file_problem(name: str):
    """True when input-folder file ``name`` exists, else the sentence saying so (a node's input validation)."""
    try:
        input_path(name)
    except FileNotFoundError as error:
        return str(error)
    return True


def input_fingerprint(name: str) -> str:
    """Path, size and modification time of an input-folder file: ComfyUI re-runs a loader when it changes."""
    from dva_model.formats.files import file_fingerprint

    return str(file_fingerprint(input_path(name)))


def output_path(prefix: str, suffix: str) -> Tuple[Path, str, str]:
    """A new numbered file in ComfyUI's output folder: (path, file name, subfolder)."""
    import folder_paths

    folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, folder_paths.get_output_directory())
    file_name = f"{name}_{counter:05}_{suffix}"
    return Path(folder) / file_name, file_name, subfolder


# ---------------------------------------------------------------------------------------------
# Devices, progress, cancel


def resolve_device(choice: str) -> torch.device:
    """'auto' is ComfyUI's compute device (the GPU unless started with --cpu); 'cpu' forces the CPU."""
    if choice not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {choice!r}.")
    if choice == "cpu":
        return torch.device("cpu")
    import comfy.model_management as mm

    return mm.get_torch_device()


def resolve_dtype(choice: str, device: torch.device) -> torch.dtype:
    """'auto' picks bf16, else fp16, where ComfyUI deems them fast on ``device``, else fp32."""
    if choice not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {choice!r}.")
    if choice != AUTO:
        return PRECISIONS[choice]
    import comfy.model_management as mm

    if mm.should_use_bf16(device):
        return torch.bfloat16
    if mm.should_use_fp16(device):
        return torch.float16
    return torch.float32


def progress_callback() -> Callable[[int, int], None]:
    """A library ``callback(done, total)`` that moves the running node's ProgressBar and cancels.

    It raises ComfyUI's InterruptProcessingException when the user pressed Cancel, so a long loop
    stops within one UNet call.
    """
    import comfy.model_management as mm
    import comfy.utils

    bar = None

    def callback(done: int, total: int) -> None:
        nonlocal bar
        mm.throw_exception_if_processing_interrupted()
        if bar is None or bar.total != total:
            bar = comfy.utils.ProgressBar(total)
        bar.update_absolute(done, total)

    return callback


def cancel_check() -> Callable[[int, int], None]:
    """A library callback that only cancels (for a stage that runs beside another one's progress bar)."""
    import comfy.model_management as mm

    def callback(_done: int, _total: int) -> None:
        mm.throw_exception_if_processing_interrupted()

    return callback


def intermediate_device() -> torch.device:
    """Where IMAGE / MASK tensors travel between nodes (the CPU in ComfyUI)."""
    import comfy.model_management as mm

    return mm.intermediate_device()


# ---------------------------------------------------------------------------------------------
# The resident model


@dataclass(frozen=True, eq=False)
class ModelHandle:
    """What a DVA_MODEL wire carries: the loaded model and the ComfyUI patcher managing its memory.

    ``model_id`` names the file the weights came from (stored with encodings to catch mismatches).
    """

    model: Any  # dva_model.model.DVAModel
    patcher: Any  # comfy.model_patcher.ModelPatcher
    model_id: str
    device: torch.device
    dtype: torch.dtype

    def acquire(self, *, frames_per_call: int = 1) -> Any:
        """Make the model resident on its device (reloading it if ComfyUI offloaded it); return it."""
        import comfy.model_management as mm

        needed = frames_per_call * UNET_BYTES_PER_FRAME if self.device.type != "cpu" else 0
        with torch.inference_mode(False):  # weights moved here stay usable by gradient-based nodes
            mm.load_models_gpu([self.patcher], memory_required=needed, force_full_load=True)
        return self.model

    def frames_per_call(self, requested: int) -> int:
        """``requested`` if positive; else as many frames as ComfyUI reports free memory for."""
        if requested > 0:
            return requested
        if self.device.type == "cpu":
            from dva_model.model import DEFAULT_BATCH_SIZE

            return DEFAULT_BATCH_SIZE
        import comfy.model_management as mm

        free = mm.get_free_memory(self.device)
        size = getattr(self.model, "image_size", 256)
        per_frame = UNET_BYTES_PER_FRAME * (size / 256) ** 2
        return max(1, min(MAX_AUTO_BATCH, int(free * 0.8 // per_frame)))


class HandleCache:
    """A small process-wide LRU of ``ModelHandle``s keyed by (file fingerprint, dtype, device).

    The fingerprint carries the file's size and modification time, so a replaced file is reloaded.
    """

    def __init__(self, size: int):
        self.size = size
        self._handles: "OrderedDict[tuple, ModelHandle]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path, *, device: torch.device, dtype: torch.dtype, model_id: Callable[[Any], str],
            load: Callable[[Path, torch.device], Any]) -> ModelHandle:
        """The handle of ``path``, built on first use: ``load(path, offload_device)`` -> torch module,
        wrapped in a ModelPatcher that moves it between ``device`` and ComfyUI's offload device."""
        from dva_model.formats.files import file_fingerprint

        stamp = file_fingerprint(path)
        key = (stamp, str(dtype), str(device))
        with self._lock:
            if key in self._handles:
                self._handles.move_to_end(key)
                return self._handles[key]
        import comfy.model_management as mm
        import comfy.model_patcher

        offload = torch.device("cpu") if device.type == "cpu" else mm.unet_offload_device()
        with torch.inference_mode(False):  # ComfyUI runs nodes in inference mode; keep normal tensors
            model = load(path, offload)
        patcher = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=offload)
        handle = ModelHandle(model=model, patcher=patcher, model_id=model_id(stamp), device=device, dtype=dtype)
        with self._lock:
            self._handles[key] = handle
            while len(self._handles) > self.size:
                self._handles.popitem(last=False)
        log.info("%s loaded for %s in %s", path.name, device, dtype)
        return handle

    def clear(self) -> None:
        """Forget every handle (ComfyUI may still hold its own references)."""
        with self._lock:
            self._handles.clear()


_dva_models = HandleCache(MODEL_CACHE_SIZE)


def load_dva_model(path: Path, *, device: torch.device, dtype: torch.dtype) -> ModelHandle:
    """The process-wide DVA model for (file, dtype, device), loading it on first use.

    Its ``model_id`` is the file's ``model_id`` fingerprint, the one latents record.
    """
    from dva_model.formats.checkpoint import load_model

    return _dva_models.get(path, device=device, dtype=dtype, model_id=lambda stamp: stamp.model_id,
                           load=lambda file, offload: load_model(file, device=offload, dtype=dtype))


def clear_model_cache() -> None:
    """Forget every cached model (tests; ComfyUI may still hold its own references)."""
    _dva_models.clear()


# ---------------------------------------------------------------------------------------------
# Layout conversion: ComfyUI IMAGE [B, H, W, C] in [0, 1] <-> library [B, C, H, W] in [-1, 1]


def image_to_crops(image: torch.Tensor) -> torch.Tensor:
    """IMAGE [N, H, W, 3] float in [0, 1] -> [N, 3, H, W] float32 in [-1, 1]."""
    if image.ndim != 4 or image.shape[-1] != 3:
        raise ValueError(f"Expected an IMAGE batch [N, H, W, 3], got shape {tuple(image.shape)}.")
    return image.permute(0, 3, 1, 2).float() * 2 - 1  # [N, H, W, 3] -> [N, 3, H, W]


def crops_to_image(crops: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] in [-1, 1] -> IMAGE [N, H, W, 3] float32 in [0, 1] on ComfyUI's intermediate device."""
    image = ((crops.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)  # [N, 3, H, W] -> [N, H, W, 3]
    return image.to(intermediate_device()).contiguous()

