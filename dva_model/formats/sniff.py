"""What kind of model file a path holds, from its name and a peek at its header, without loading it.

Pickled PyTorch files are never unpickled here: the pickle stream of a zip checkpoint (``*/data.pkl``, a
few hundred KB even for the 1 GB release) is walked with ``pickletools.genops``, which only decodes
opcodes, to collect the strings it holds (the state-dict keys). A ``.safetensors`` file is known by the
JSON header it starts with. Used to show each loader only the files of its own kind.
"""

import json
import pickletools
import struct
import zipfile
from pathlib import Path
from typing import Iterable, Literal, Set, Union


from dva_model.constants import DELTA_FORMAT, DIRECTIONS_FORMAT, DVA_MODEL_FORMAT, LATENT_FORMAT

ModelKind = Literal["dva", "classifier", "clip", "latent_stats", "dlib", "latent", "delta", "unknown"]

MAX_HEADER_BYTES = 64 << 20  # a safetensors header or a data.pkl larger than this is not peeked at
_STRING_OPCODES = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING"}


def model_kind(path: Union[str, Path]) -> ModelKind:
    """The kind of model file at ``path``; "unknown" when the peek cannot tell (never raises on bad files)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".dat":
        return "dlib"
    if suffix == ".pkl":
        return "latent_stats"
    try:
        if suffix == ".safetensors":
            return _safetensors_kind(path)
        if zipfile.is_zipfile(path):
            return _zip_kind(path)
    except (OSError, ValueError, zipfile.BadZipFile, struct.error):
        return "unknown"
    return "unknown"


def _kind_of_keys(keys: Iterable[str]) -> ModelKind:
    keys = set(keys)
    if any(k.startswith(("ema_model.unet", "ema_model.encoder", "unet.", "encoder.")) for k in keys):
        return "dva"
    if "classifier.weight" in keys:
        return "classifier"
    if any(k.startswith(("visual.", "transformer.resblocks")) for k in keys):
        return "clip"
    return "unknown"


def _safetensors_kind(path: Path) -> ModelKind:
    with path.open("rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        if length > MAX_HEADER_BYTES:
            return "unknown"
        header = json.loads(file.read(length))
    metadata = header.pop("__metadata__", None) or {}
    kinds = {DVA_MODEL_FORMAT: "dva", DIRECTIONS_FORMAT: "classifier", LATENT_FORMAT: "latent", DELTA_FORMAT: "delta"}
    if metadata.get("format") in kinds:
        return kinds[metadata["format"]]
    return _kind_of_keys(header)


def _zip_kind(path: Path) -> ModelKind:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if any(name.endswith("/constants.pkl") or "/code/" in name for name in names):
            return "clip"  # a TorchScript archive: OpenAI's CLIP file is the one this pack reads
        pickles = [info for info in archive.infolist() if info.filename.endswith("/data.pkl")]
        if len(pickles) != 1 or pickles[0].file_size > MAX_HEADER_BYTES:
            return "unknown"
        return _kind_of_keys(_pickle_strings(archive.read(pickles[0])))


def _pickle_strings(data: bytes) -> Set[str]:
    """Every string constant of a pickle stream, read opcode by opcode (nothing is executed or imported)."""
    strings = set()
    try:
        for opcode, argument, _ in pickletools.genops(data):
            if opcode.name in _STRING_OPCODES and isinstance(argument, (str, bytes)):
                strings.add(argument if isinstance(argument, str) else argument.decode("latin-1"))
    except ValueError:  # a truncated or odd stream: keep what was read
        pass
    return strings
