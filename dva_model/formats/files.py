"""Writing files safely, reading .safetensors files with one-sentence errors, and file fingerprints."""

import errno
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Tuple, Type, Union

from torch import Tensor

from dva_model.errors import UserError

PathLike = Union[str, os.PathLike]
MAX_SAFETENSORS_HEADER = 100 * 2**20  # the safetensors library's own limit on the JSON header


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


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest existing ancestor (the folder in which missing folders would be made)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _probe_folder(folder: Path, *, what: str, target: Path) -> None:
    """Create and delete a file in ``folder``: the only check that also sees read-only mounts and full disks
    of the kind that refuse a new file (``os.access`` ignores both, and root passes every permission)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".dva-write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise UserError(f"Cannot write {what} {target}: {error.strerror or error} in {folder}; "
                        f"choose a writable folder.") from None


def check_writable_file(path: PathLike, *, what: str = "the output", make_parents: bool = False) -> Path:
    """Refuse, before any work, an output file that cannot be written: a folder by that name, a missing
    parent folder (unless the writer makes it: ``make_parents``, as ``write_atomically`` does), or a
    folder where no file can be created (read-only, permission, full). Returns the path."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"Cannot write {what} {path}: it is a folder; give a file name.")
    if make_parents:
        check_writable_folder(path.parent, what=what)
        return path
    if not path.parent.is_dir():
        raise UserError(f"Cannot write {what} {path}: the folder {path.parent} does not exist; create it first.")
    _probe_folder(path.parent, what=what, target=path)
    return path


def check_writable_folder(path: PathLike, *, what: str = "the output folder") -> Path:
    """Refuse, before any work, an output folder that cannot be made or written (a file by that name,
    a read-only or full disk, no permission). Nothing is created. Returns the path."""
    path = Path(path)
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise UserError(f"Cannot write {what} {path}: {existing} is a file, not a folder; choose another path.")
    _probe_folder(existing, what=what, target=path)
    return path


_OS_ERROR_HINTS = {
    errno.ENOSPC: "free some disk space or write elsewhere",
    errno.EDQUOT: "free some disk space or write elsewhere",
    errno.EROFS: "choose a writable folder",
    errno.EACCES: "check the permissions or choose another path",
    errno.EPERM: "check the permissions or choose another path",
}


def describe_os_error(error: OSError) -> str:
    """One sentence for an operating-system error (disk full, read-only, permission, missing file), naming
    the file it concerns and, where there is one, what to do."""
    reason = error.strerror or str(error) or type(error).__name__
    where = "" if error.filename is None else f" ({error.filename})"
    hint = _OS_ERROR_HINTS.get(error.errno)
    return f"{reason}{where}; {hint}." if hint else f"{reason}{where}."


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

    _check_safetensors_header(Path(path), what, error)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            metadata = file.metadata() or {}
            tensors = {key: file.get_tensor(key) for key in file.keys()}
    except (SafetensorError, OSError, ValueError, TypeError) as caught:
        raise error(f"{path} is not a readable .safetensors {what} ({caught}).") from caught
    return tensors, metadata


def _check_safetensors_header(path: Path, what: str, error: Type[UserError]) -> None:
    """The header's claims against the file before anything is read: its own length and the tensor bytes.

    (The safetensors library checks every offset as well; this gives the one-sentence error first.)
    """
    def refuse(reason: str) -> UserError:
        return error(f"{path} is not a readable .safetensors {what} ({reason}).")

    try:
        size = path.stat().st_size
        with open(path, "rb") as file:
            length = int.from_bytes(file.read(8), "little")
            if size < 8 or length > min(size - 8, MAX_SAFETENSORS_HEADER):
                raise refuse(f"its header claims {length:,} bytes of a {size:,}-byte file")
            header = json.loads(file.read(length))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as caught:
        raise refuse(f"its header is not readable JSON: {caught}") from caught
    if not isinstance(header, dict):
        raise refuse("its header is not a JSON object")
    claimed = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise refuse(f"tensor {name!r} has no valid data_offsets")
        claimed += offsets[1] - offsets[0]
    if claimed > size - 8 - length:
        raise refuse(f"its tensors claim {claimed:,} bytes but the file holds {size - 8 - length:,}")


@dataclass(frozen=True)
class FileFingerprint:
    """Who a file is, cheaply (no hashing): the name it was opened by, its resolved path, size and mtime.

    ``model_id`` ("name:size") is what latents record to catch a model mix-up (stable across copies);
    ``str()`` adds the path and modification time, for caches and change detection.
    """

    name: str
    path: str
    size: int
    mtime_ns: int

    @property
    def model_id(self) -> str:
        """"name:size", the model identity stored in latent files (format ``dva-latent/1``)."""
        return f"{self.name}:{self.size}"

    def __str__(self) -> str:
        return f"{self.path}:{self.size}:{self.mtime_ns}"


def file_fingerprint(path: PathLike) -> FileFingerprint:
    """The fingerprint of the existing file ``path`` (one ``stat``)."""
    path = Path(path)
    stat = path.stat()
    return FileFingerprint(name=path.name, path=str(path.resolve()), size=stat.st_size, mtime_ns=stat.st_mtime_ns)
