"""An encoded clip on disk: per-frame features and noise maps as one ``.safetensors`` file.

Inversion is the expensive half of an edit; saving its result lets a clip be re-edited later
without it. Tensors (all float32):

    z_id      [N, 512]        per-frame ArcFace identity
    z_lnd     [N, 102]        per-frame landmark feature
    x_T       [N, 3, H, W]    DDIM-inverted noise maps
    identity  [512]           the identity the inversion was conditioned on (the clip mean, as published)

Metadata: the step count of the inversion, a fingerprint of the model file and the frame names.

A file written by ``LatentFile`` (the streaming edit) may also hold the aligned crops the clip was
encoded from, ``crops [N, 3, H, W]`` in [-1, 1], and is written and read a few rows at a time: its
layout is fixed when it is created (the frame count is known once the faces are tracked), so each
chunk of crops, features or noise maps goes to its place as soon as it is computed, and a reader
takes rows without loading (or memory-mapping) the rest. It is a plain safetensors file, so
``load_latent`` and any safetensors reader open it too.
"""

import functools
import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from dva_model.constants import ID_DIM, LANDMARK_DIM, LATENT_FORMAT
from dva_model.errors import UserError
from dva_model.formats.files import DEFAULT_FILE_MODE, write_safetensors

ROW_TENSORS = ("z_id", "z_lnd", "x_T", "crops")  # one row per frame; "crops" is optional
FLOAT32_BYTES = 4
HEADER_LENGTH_BYTES = 8  # safetensors: a little-endian u64 header length, the JSON header, the data
HEADER_ALIGN = 8  # the data starts on an 8-byte boundary (the header is padded with spaces)
MAX_HEADER_BYTES = 100 * 2**20  # the safetensors library's own limit


@dataclass(frozen=True, kw_only=True)
class Latent:
    """A clip's encoding (shapes in the module docstring)."""

    z_id: Tensor
    z_lnd: Tensor
    x_T: Tensor
    identity: Tensor
    steps: int
    model_id: str = ""
    frame_names: Tuple[str, ...] = field(default_factory=tuple)
    source_folder: str = ""  # the aligned crops folder it was encoded from ("" when unknown)

    def __post_init__(self) -> None:
        n = len(self.x_T)
        if self.z_id.shape != (n, ID_DIM) or self.z_lnd.shape != (n, LANDMARK_DIM) or self.identity.shape != (ID_DIM,):
            raise ValueError(
                f"Inconsistent latent: z_id {tuple(self.z_id.shape)}, z_lnd {tuple(self.z_lnd.shape)}, "
                f"x_T {tuple(self.x_T.shape)}, identity {tuple(self.identity.shape)}."
            )
        if self.frame_names and len(self.frame_names) != n:
            raise ValueError(f"{len(self.frame_names)} frame names for {n} frames.")


def save_latent(path: Union[str, Path], latent: Latent) -> Path:
    """Write ``latent`` to ``path`` (safetensors, atomically: a temporary file renamed into place)."""
    tensors = {name: getattr(latent, name).to(torch.float32)
               for name in ("z_id", "z_lnd", "x_T", "identity")}
    metadata = {
        "format": LATENT_FORMAT,
        "steps": str(latent.steps),
        "model_id": latent.model_id,
        "frame_names": json.dumps(list(latent.frame_names)),
        "source_folder": latent.source_folder,
    }
    return write_safetensors(path, tensors, metadata)


def load_latent(path: Union[str, Path]) -> Latent:
    """Read a file written by ``save_latent`` or ``LatentFile`` (without its crops) into memory; a
    UserError naming the file for anything else."""
    with LatentFile.open(path) as file:
        return file.to_latent()


@dataclass(frozen=True)
class _Slot:
    """Where one tensor's data lies in the file: absolute byte ``offset`` and ``shape``."""

    offset: int
    shape: Tuple[int, ...]

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * FLOAT32_BYTES


def _shapes(frames: int, image_size: int, crops: bool) -> Dict[str, Tuple[int, ...]]:
    shapes = {"identity": (ID_DIM,), "z_id": (frames, ID_DIM), "z_lnd": (frames, LANDMARK_DIM),
              "x_T": (frames, 3, image_size, image_size)}
    if crops:
        shapes["crops"] = (frames, 3, image_size, image_size)
    return shapes


class LatentFile:
    """A latent file written and read a few rows at a time (layout in the module docstring).

    ``create`` lays out a file for ``frames`` rows under a hidden temporary name beside ``path``;
    ``write`` fills rows of one tensor; ``commit`` renames it into place (``discard`` deletes it).
    ``open`` reads a finished file's header and checks every size before anything is allocated.
    Reads copy just the asked rows into memory (``os.preadv``), so a long clip's file is never
    resident. Use as a context manager; on an exception a file being written is discarded.
    """

    def __init__(self, path: Path, fd: int, slots: Dict[str, _Slot], metadata: Dict[str, str], *,
                 writing: Optional[Path] = None) -> None:
        self.path, self._fd, self._slots, self._writing = path, fd, slots, writing
        self.steps = int(metadata["steps"])
        self.model_id = metadata.get("model_id", "")
        self.frame_names: Tuple[str, ...] = tuple(json.loads(metadata.get("frame_names", "[]")))
        self.source_folder = metadata.get("source_folder", "")
        self.frames = slots["x_T"].shape[0]
        self.image_size = slots["x_T"].shape[-1]

    @classmethod
    def create(cls, path: Union[str, Path], *, frames: int, image_size: int, steps: int, model_id: str = "",
               frame_names: Sequence[str] = (), source_folder: str = "", crops: bool = True) -> "LatentFile":
        """Lay out a new latent file for ``frames`` rows (zeros until written) at a temporary name."""
        path = Path(path)
        if not path.parent.is_dir():
            raise UserError(f"The folder {path.parent} for the latent file does not exist; create it first.")
        if frame_names and len(frame_names) != frames:
            raise ValueError(f"{len(frame_names)} frame names for {frames} frames.")
        metadata = {"format": LATENT_FORMAT, "steps": str(steps), "model_id": model_id,
                    "frame_names": json.dumps(list(frame_names)), "source_folder": source_folder}
        header, data_bytes = {"__metadata__": metadata}, 0
        for name, shape in _shapes(frames, image_size, crops).items():
            size = math.prod(shape) * FLOAT32_BYTES
            header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [data_bytes, data_bytes + size]}
            data_bytes += size
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-(HEADER_LENGTH_BYTES + len(text)) % HEADER_ALIGN)
        start = HEADER_LENGTH_BYTES + len(text)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            _write_all(fd, struct.pack("<Q", len(text)) + text, 0)
            os.ftruncate(fd, start + data_bytes)  # a sparse file: unwritten rows read as zeros
        except BaseException:
            os.close(fd)
            partial.unlink(missing_ok=True)
            raise
        slots = {name: _Slot(start + entry["data_offsets"][0], tuple(entry["shape"]))
                 for name, entry in header.items() if name != "__metadata__"}
        return cls(path, fd, slots, metadata, writing=partial)

    @classmethod
    def open(cls, path: Union[str, Path]) -> "LatentFile":
        """Open a finished latent file for reading; a UserError naming the file when it is not one."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"The latent file {path} does not exist; create it with `python -m dva_model encode`.")
        fd = os.open(path, os.O_RDONLY)
        try:
            slots, metadata = _read_header(fd, path)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, slots, metadata)

    @property
    def unfinished_path(self) -> Optional[Path]:
        """Where a file being written lies until ``commit`` (other processes may ``open`` it to read rows)."""
        return self._writing

    @property
    def has_crops(self) -> bool:
        return "crops" in self._slots

    def _slot(self, name: str) -> _Slot:
        if name not in self._slots:
            raise KeyError(f"{self.path} holds no {name!r} tensor.")
        return self._slots[name]

    def write(self, name: str, start: int, values: Tensor) -> None:
        """Store ``values`` [n, ...] (any device/dtype, stored float32) as rows start..start+n-1 of ``name``
        (``identity`` [512] is written whole with start 0)."""
        if self._writing is None:
            raise ValueError(f"{self.path} was opened for reading; create a LatentFile to write one.")
        slot = self._slot(name)
        array = np.ascontiguousarray(values.detach().to("cpu", torch.float32).numpy())
        rows = array.shape if name == "identity" else array.shape[1:]
        expected = slot.shape if name == "identity" else slot.shape[1:]
        if tuple(rows) != tuple(expected) or (name != "identity" and not 0 <= start <= start + len(array) <= slot.shape[0]):
            raise ValueError(f"Cannot write {list(array.shape)} at row {start} of {name} {list(slot.shape)}.")
        offset = slot.offset + (0 if name == "identity" else start * slot.row_bytes)
        _write_all(self._fd, memoryview(array).cast("B"), offset)

    def read(self, name: str, rows: Optional[slice] = None) -> Tensor:
        """Rows of ``name`` as a float32 CPU tensor ([n, ...]; ``identity``: [512]); all rows by default."""
        slot = self._slot(name)
        if name == "identity":
            start, count = 0, 1
            shape = slot.shape
        else:
            start, stop, _ = (rows or slice(None)).indices(slot.shape[0])
            count = max(stop - start, 0)
            shape = (count,) + slot.shape[1:]
        array = np.empty(shape, dtype=np.float32)
        if array.size:
            offset = slot.offset + (0 if name == "identity" else start * slot.row_bytes)
            _read_all(self._fd, memoryview(array).cast("B"), offset, self.path)
        return torch.from_numpy(array)

    def chunks(self, name: str, size: int) -> Iterator[Tuple[slice, Tensor]]:
        """``(rows, values)`` of ``name``, ``size`` rows at a time, in order."""
        for start in range(0, self.frames, size):
            rows = slice(start, min(start + size, self.frames))
            yield rows, self.read(name, rows)

    def to_latent(self) -> Latent:
        """Everything but the crops, in memory (for short clips and for the in-memory API)."""
        try:
            return Latent(z_id=self.read("z_id"), z_lnd=self.read("z_lnd"), x_T=self.read("x_T"),
                          identity=self.read("identity"), steps=self.steps, model_id=self.model_id,
                          frame_names=self.frame_names, source_folder=self.source_folder)
        except ValueError as error:
            raise UserError(f"{self.path} is an inconsistent DVA latent file ({error}).") from error

    def commit(self) -> Path:
        """Move the written file into place (atomically); it stays open for reading."""
        if self._writing is not None:
            os.fsync(self._fd)
            os.chmod(self._writing, DEFAULT_FILE_MODE)
            os.replace(self._writing, self.path)
            self._writing = None
        return self.path

    def discard(self) -> None:
        """Close the file and delete what was being written (a finished file is only closed)."""
        partial, self._writing = self._writing, None
        self.close()
        if partial is not None:
            partial.unlink(missing_ok=True)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._writing is not None:
            self._writing.unlink(missing_ok=True)
            self._writing = None

    def __enter__(self) -> "LatentFile":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.close()  # an unfinished file (no commit) is deleted


@dataclass(frozen=True)
class StoredLatent:
    """A finished latent file, by path: the per-frame features and identity are read when first asked
    for (small: ~2.5 kB a frame), x_T and the crops only through ``open()`` a few rows at a time.

    It answers like a ``Latent`` for the small fields (``z_id``, ``z_lnd``, ``identity``, ``steps``,
    ``model_id``, ``frame_names``) so code that needs only those takes either; ``load()`` gives a
    whole ``Latent`` (for short clips).
    """

    path: Path

    def open(self) -> LatentFile:
        return LatentFile.open(self.path)

    @functools.cached_property
    def _small(self) -> dict:
        with self.open() as file:
            return {"z_id": file.read("z_id"), "z_lnd": file.read("z_lnd"), "identity": file.read("identity"),
                    "steps": file.steps, "model_id": file.model_id, "frame_names": file.frame_names,
                    "frames": file.frames, "image_size": file.image_size}

    z_id = property(lambda self: self._small["z_id"])
    z_lnd = property(lambda self: self._small["z_lnd"])
    identity = property(lambda self: self._small["identity"])
    steps = property(lambda self: self._small["steps"])
    model_id = property(lambda self: self._small["model_id"])
    frame_names = property(lambda self: self._small["frame_names"])
    frames = property(lambda self: self._small["frames"])

    @property
    def x_T(self) -> Tensor:
        """Every x_T [N, 3, H, W], read now and not kept (prefer ``open().chunks("x_T", n)``)."""
        with self.open() as file:
            return file.read("x_T")

    def load(self) -> Latent:
        with self.open() as file:
            return file.to_latent()


def _write_all(fd: int, data, offset: int) -> None:
    view = memoryview(data).cast("B")
    while len(view):
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _read_all(fd: int, view: memoryview, offset: int, path: Path) -> None:
    while len(view):
        got = os.preadv(fd, [view], offset)
        if got == 0:
            raise UserError(f"{path} ends early; the latent file is truncated.")
        view, offset = view[got:], offset + got


def _read_header(fd: int, path: Path) -> Tuple[Dict[str, _Slot], Dict[str, str]]:
    """Parse and check a latent file's safetensors header: every shape and offset before any allocation."""
    size = os.fstat(fd).st_size

    def bad(reason: str) -> UserError:
        return UserError(f"{path} is not a readable .safetensors latent file ({reason}).")

    prefix = os.pread(fd, HEADER_LENGTH_BYTES, 0)
    if len(prefix) < HEADER_LENGTH_BYTES:
        raise bad("too short")
    (length,) = struct.unpack("<Q", prefix)
    if length > min(MAX_HEADER_BYTES, size - HEADER_LENGTH_BYTES):
        raise bad("header length out of range")
    try:
        header = json.loads(os.pread(fd, length, HEADER_LENGTH_BYTES))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise bad(f"header is not JSON: {error}") from error
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if metadata.get("format") != LATENT_FORMAT:
        raise UserError(f"{path} is not a DVA latent file (format {metadata.get('format')!r}, expected {LATENT_FORMAT}).")
    data_start, slots = HEADER_LENGTH_BYTES + length, {}
    try:
        int(metadata["steps"])
        names = json.loads(metadata.get("frame_names", "[]"))
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise ValueError("frame_names is not a list of names")
        for name in ("identity",) + ROW_TENSORS:
            if name not in header:
                if name == "crops":
                    continue
                raise KeyError(name)
            entry = header[name]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
            if entry["dtype"] != "F32" or end - begin != math.prod(shape) * FLOAT32_BYTES or data_start + end > size:
                raise ValueError(f"{name}: {entry['dtype']} {list(shape)} at bytes {begin}..{end}")
            slots[name] = _Slot(data_start + begin, shape)
    except (KeyError, ValueError, TypeError) as error:
        raise UserError(f"{path} is an incomplete DVA latent file ({error}).") from error
    frames, image_size = slots["x_T"].shape[0], slots["x_T"].shape[-1]
    expected = _shapes(frames, image_size, "crops" in slots)
    if len(slots["x_T"].shape) != 4 or slots["x_T"].shape[1] != 3 or any(slots[n].shape != s for n, s in expected.items()) or (
            names and len(names) != frames):
        found = {n: list(s.shape) for n, s in slots.items()}
        raise UserError(f"{path} is an inconsistent DVA latent file (shapes {found}).")
    return slots, metadata
