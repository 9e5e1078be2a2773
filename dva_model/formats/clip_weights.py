"""OpenAI's CLIP ViT-B/16 weight files: where they are cached, fetching them on request, reading one.

Nothing here builds a network or computes a loss (``dva_model.edit.clip_loss`` does); nothing is
downloaded unless ``download_clip_weights`` is called for an explicit request.
"""

import logging
import zipfile
from pathlib import Path
from typing import Dict, Final, Optional, Union

from torch import Tensor

from dva_model.errors import ModelFileError
from dva_model.formats.files import read_safetensors
from dva_model.formats.safe_pickle import load_pickled, read_torchscript_tensors

logger = logging.getLogger(__name__)

RELEASE_CLIP_NAME: Final = "ViT-B-16"  # open_clip's name for OpenAI's ViT-B/16
OPENAI_CACHE_FILE: Final = Path("~/.cache/clip/ViT-B-16.pt")  # where OpenAI's clip and open_clip keep it
HF_CACHE_REPO: Final = "timm/vit_base_patch16_clip_224.openai"  # open_clip's hub copy of the same weights
HF_CACHE_FILES: Final = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
CLIP_MANIFEST_KEY: Final = "clip/ViT-B-16 (openai)"  # its entry in the download manifest

PathLike = Union[str, Path]


def find_cached_clip_weights() -> Optional[Path]:
    """OpenAI ViT-B/16 weights already on disk: OpenAI's / open_clip's ~/.cache/clip/ViT-B-16.pt, else
    open_clip's Hugging Face cache copy. Never downloads; None when there are none."""
    openai_file = OPENAI_CACHE_FILE.expanduser()
    if openai_file.is_file():
        return openai_file
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in HF_CACHE_FILES:
        cached = try_to_load_from_cache(HF_CACHE_REPO, filename)
        if isinstance(cached, str) and Path(cached).is_file():
            return Path(cached)
    return None


def download_clip_weights() -> Path:
    """Fetch OpenAI's ViT-B/16 with open_clip's own download (its Hugging Face copy, else OpenAI's URL)
    into open_clip's cache, where ``find_cached_clip_weights`` finds it; return the file.

    Only for an explicit request (the ``download`` command, ``--download-clip``, a node option)."""
    try:
        from open_clip.pretrained import download_pretrained, get_pretrained_cfg
    except ImportError:
        raise ModelFileError("Downloading CLIP needs the package open-clip-torch: pip install open-clip-torch") from None

    logger.info("Downloading OpenAI CLIP %s through open_clip.", RELEASE_CLIP_NAME)
    try:
        path = download_pretrained(get_pretrained_cfg(RELEASE_CLIP_NAME, "openai"))
    except (OSError, RuntimeError) as error:
        raise ModelFileError(f"open_clip could not download OpenAI's {RELEASE_CLIP_NAME} ({error}); check the "
                             "network connection and try again.") from None
    if not path or not Path(path).is_file():
        raise ModelFileError(f"open_clip returned no file for OpenAI's {RELEASE_CLIP_NAME}.")
    return Path(path)


def read_clip_state(path: PathLike) -> Dict[str, Tensor]:
    """The state dict of a CLIP weight file: OpenAI's TorchScript ``.pt``, an open_clip ``.safetensors``,
    or a ``.bin`` / ``.pt`` state dict; nothing in the file runs (``safe_pickle``)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"The CLIP weight file {path} does not exist; pass the OpenAI ViT-B-16.pt file.")
    what = "The CLIP weight file"
    if path.suffix == ".safetensors":
        return read_safetensors(path, what="CLIP weight file", error=ModelFileError)[0]
    if _is_torchscript(path):
        # OpenAI's archive: only its tensors are read; torch.jit.load would run the archive's code.
        return read_torchscript_tensors(path, what=what)
    loaded = load_pickled(path, what=what)
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise ModelFileError(f"{path} holds a {type(loaded).__name__} of other things, not a CLIP state dict.")
    return {str(key).removeprefix("module."): value for key, value in loaded.items()}


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist())
