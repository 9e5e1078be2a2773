"""Writing files safely and reading .safetensors files with one-sentence errors."""

import os
import tempfile
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Tuple, Type, Union

from torch import Tensor

from dva_model.errors import UserError

PathLike = Union[str, os.PathLike]


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


DEFAULT_FILE_MODE = _default_file_mode()


def write_atomically(path: PathLike, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place.

    A reader never sees a half-written file, and a failed or cancelled write leaves nothing behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, DEFAULT_FILE_MODE)  # mkstemp's 0600 would make outputs private to their writer
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_safetensors(path: PathLike, tensors: Mapping[str, Tensor], metadata: Optional[Dict[str, str]] = None) -> Path:
    """Save CPU-contiguous copies of ``tensors`` (with string ``metadata``) to ``path``, atomically."""
    from safetensors.torch import save_file

    state = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    write_atomically(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))
    return Path(path)


def read_safetensors(
    path: PathLike, *, what: str, error: Type[UserError] = UserError
) -> Tuple[Dict[str, Tensor], Dict[str, str]]:
    """All tensors and the metadata of a .safetensors file on the CPU.

    ``what`` names the expected content for the message of ``error`` when the file is unreadable.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            metadata = file.metadata() or {}
            tensors = {key: file.get_tensor(key) for key in file.keys()}
    except (SafetensorError, OSError, ValueError) as caught:
        raise error(f"{path} is not a readable .safetensors {what} ({caught}).") from caught
    return tensors, metadata
