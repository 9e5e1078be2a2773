"""Loading pickled PyTorch files (``torch.save``) without running anything from them.

Every file is treated as hostile. Before any unpickling the file is inspected as bytes:
- a TorchScript archive (``constants.pkl``, ``code/``...) is refused: ``torch.load`` would hand it to
  ``torch.jit.load``, whose ``__setstate__`` methods are code from the file;
- a zip must hold only what ``torch.save`` writes, stored uncompressed (so no record is larger than the
  file), and its pickle may name only the globals of ``_ALLOWED_GLOBALS`` or of the release's config
  classes; anything else (``torch.storage._load_from_bytes``, numpy arrays and scalars, any other class)
  is refused with one sentence naming the file;
- the legacy (pre-1.6, non-zip) format, which the released encoder files (``model_ir_se50.pth``, the
  MobileNet ``.pth.tar``, ``79999_iter.pth``) may use, gets the same scan of its pickles; the old tar
  format is refused.
Then torch's own ``weights_only=True`` unpickler reads the file: it builds only tensors, storages,
containers and the allow-listed globals, lets BUILD touch only those instances (never a function or a
class), and refuses any persistent id but a storage (so no ``dump_patches`` source check). The release's
config classes (``config.TrainConfig``, its enums) resolve to inert ``ReleaseObject`` stand-ins that only
record their arguments and fields; they are registered with ``torch.serialization.safe_globals`` for the
duration of one load and removed afterwards. Finally every tensor must fit inside its own storage, so a
stride-0 view cannot stand for millions of elements the file does not hold.
"""

import _compat_pickle
import io
import pickle
import pickletools
import re
import threading
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

import torch

from dva_model.errors import ModelFileError

# Globals that resolve to the real object: torch's tensor rebuilders, dtypes and storage types, plus the
# containers torch.save and Lightning use. Each is also on torch's own weights_only list.
_ALLOWED_GLOBALS = frozenset(
    {
        "collections.OrderedDict",
        "builtins.set",
        "_codecs.encode",  # protocol-2 pickles spell bytes as _codecs.encode(str, "latin1")
        "torch.Size",
        "torch.device",
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_tensor_v3",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
    }
    | {f"torch.{name}" for name in dir(torch) if isinstance(getattr(torch, name), torch.dtype)}
    | {f"torch.{name}" for name in dir(torch) if name.endswith("Storage") and name != "TypedStorage"}
    | {"torch.storage.UntypedStorage"}
)

# Classes the released training code pickles in a Lightning checkpoint's hyper_parameters when they are
# saved as objects (the release saves a plain dict; older Lightning runs kept {"conf": TrainConfig}).
_RELEASE_CLASSES = (
    "config.TrainConfig", "config.PretrainConfig", "config.ModelName",
    "choices.TrainMode", "choices.ManipulateMode", "choices.ManipulateLossType", "choices.OptimizerType",
    "choices.ModelName", "choices.ModelType", "choices.Activation",
    "diffusion.base.GenerativeType", "diffusion.base.LossType", "diffusion.base.ModelMeanType",
    "diffusion.base.ModelVarType", "model.unet.ScaleAt", "model.latentnet.LatentNetType",
    "model.unet.BeatGANsUNetConfig", "model.unet_autoenc.BeatGANsAutoencConfig", "model.latentnet.MLPSkipNetConfig",
)

# Records torch.save writes into its zip (below the archive's top folder).
_TORCH_SAVE_RECORD = re.compile(
    r"[^/]+/(data\.pkl|byteorder|version|\.format_version|\.storage_alignment|\.data/version"
    r"|\.data/serialization_id|data/\w+)"
)
_TORCHSCRIPT_RECORD = re.compile(r"(^|/)(constants\.pkl|bytecode\.pkl|code/|extra/|\.data/.*\.pkl$)")
# Opcodes that resolve a global other than by GLOBAL (which the scan reads) or build objects torch's
# weights-only unpickler does not support anyway.
_REFUSED_OPCODES = frozenset({"STACK_GLOBAL", "INST", "OBJ", "EXT1", "EXT2", "EXT4", "PERSID"})
_LEGACY_PICKLES = 5  # magic number, protocol version, system info, the object, storage keys
_SCRIPTED_PREFIXES = ("__torch__.", "torch.jit._pickle.")  # TorchScript's own classes and list/dict builders
_MAX_DEPTH = 64  # nesting depth walked when checking the loaded tensors
_RETRY_MESSAGE = "re-save the weights from a trusted Python with torch.save(model.state_dict()), or use a .safetensors file"

_load_lock = threading.Lock()  # safe_globals is process-wide: one registration at a time


class ReleaseObject:
    """Inert stand-in for a release config class or enum: keeps its arguments and fields, runs nothing.

    ``args`` are the constructor arguments (an enum's value), ``fields`` the pickled attributes, which
    read back as attributes (``conf.img_size``). Each instance is new: no state is shared between loads.
    """

    __slots__ = ("args", "fields")
    qualified_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "ReleaseObject":
        instance = object.__new__(cls)
        object.__setattr__(instance, "args", args)
        object.__setattr__(instance, "fields", {})
        return instance

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots) form
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.fields.update({k: v for k, v in state.items() if isinstance(k, str)})

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{self.qualified_name} (a stand-in read from a file) is read-only")

    @property
    def value(self) -> Any:
        """An enum member's value (its only argument)."""
        return self.args[0] if len(self.args) == 1 else None

    def __getattr__(self, name: str) -> Any:
        fields = object.__getattribute__(self, "fields")
        if not name.startswith("_") and name in fields:
            return fields[name]
        raise AttributeError(f"{self.qualified_name} (not imported) has no field {name!r}")

    def __repr__(self) -> str:
        return f"<stand-in {self.qualified_name} args={self.args!r} fields={sorted(self.fields)}>"


_stand_in_classes: Dict[str, type] = {}


def _stand_in(name: str) -> type:
    """The ReleaseObject subclass that stands in for the class or function ``name`` (one per name)."""
    if name not in _stand_in_classes:
        _stand_in_classes[name] = type(name.rpartition(".")[2], (ReleaseObject,),
                                       {"__slots__": (), "qualified_name": name})
    return _stand_in_classes[name]


_STAND_INS: List[Tuple[type, str]] = [(_stand_in(name), name) for name in _RELEASE_CLASSES]
_KNOWN_GLOBALS = _ALLOWED_GLOBALS | set(_RELEASE_CLASSES)


def load_pickled(path: Path, *, what: str) -> Any:
    """Load a ``torch.save`` file (zip or legacy format) onto the CPU without running code from it.

    ``what`` names the expected content for error messages ("The DVA checkpoint"...). Raises
    ModelFileError with one sentence for a missing, empty, truncated, foreign or refused file.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{what} {path} does not exist.")
    size = path.stat().st_size
    if size == 0:
        raise ModelFileError(f"{what} {path} is empty (0 bytes); download it again.")
    with open(path, "rb") as file:
        head = file.read(4)
    try:
        if head == b"PK\x03\x04":
            _inspect_zip(path, what, size)
        elif head[:1] == b"\x80":
            _inspect_legacy(path, what)
        else:
            raise ModelFileError(f"{what} {path} is not a PyTorch file this program reads (zip or legacy "
                                 f"format; it starts with {head!r}); download it again.")
    except (ValueError, zipfile.BadZipFile, EOFError, OSError) as error:
        if isinstance(error, ModelFileError):
            raise
        raise _unreadable(path, what, size, error) from error
    loaded = _torch_load(path, _STAND_INS, path, what, size)
    _check_tensors(loaded, path, what)
    return loaded


def read_torchscript_tensors(path: Path, *, what: str) -> Dict[str, torch.Tensor]:
    """The tensors of a TorchScript archive (OpenAI's CLIP ``.pt``) by attribute path ("visual.proj"...),
    read as data: its code and ``__setstate__`` methods never run.

    Only the archive's ``data.pkl`` and tensor records are read. Its scripted classes (``__torch__.*``)
    become inert stand-ins; any other global outside the allow-list is refused as in ``load_pickled``.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{what} {path} does not exist.")
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
            _check_records(records, path, what, size)
            prefix = records[0].filename.split("/")[0]
            data = archive.read(f"{prefix}/data.pkl")
            storages = {record.filename.rsplit("/", 1)[1]: archive.read(record)
                        for record in records if record.filename.startswith(f"{prefix}/data/")}
        found = _globals_in(io.BytesIO(data))
    except (ValueError, zipfile.BadZipFile, EOFError, OSError, KeyError, IndexError) as error:
        if isinstance(error, ModelFileError):
            raise
        raise _unreadable(path, what, size, error) from error
    scripted = {name for name in found if name.startswith(_SCRIPTED_PREFIXES)}
    _check_globals(found - scripted, path, what)
    copy = io.BytesIO()  # the same pickle and records in torch.save's layout, without the code
    with zipfile.ZipFile(copy, "w", zipfile.ZIP_STORED) as plain:
        plain.writestr("archive/data.pkl", data)
        plain.writestr("archive/byteorder", "little")
        plain.writestr("archive/version", "3\n")
        for key, blob in storages.items():
            plain.writestr(f"archive/data/{key}", blob)
    copy.seek(0)
    loaded = _torch_load(copy, [(_stand_in(name), name) for name in sorted(scripted)], path, what, size)
    _check_tensors(loaded, path, what)
    return dict(_attribute_tensors(loaded, ""))


def _attribute_tensors(value: Any, prefix: str) -> Iterator[Tuple[str, torch.Tensor]]:
    if isinstance(value, ReleaseObject):
        for name, child in value.fields.items():
            if isinstance(child, torch.Tensor):
                yield prefix + name, child
            elif isinstance(child, ReleaseObject):
                yield from _attribute_tensors(child, f"{prefix}{name}.")


def _torch_load(source: Any, stand_ins: List[Tuple[type, str]], path: Path, what: str, size: int) -> Any:
    """torch's weights_only load with ``stand_ins`` allow-listed for this call only."""
    try:
        with _load_lock, torch.serialization.safe_globals(stand_ins), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols; the scan has judged the file
            return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # torch's unpickler refused an operation (BUILD on a function...)
        detail = str(error).partition("WeightsUnpickler error:")[2].strip()
        reason = detail.split("\n")[0].strip().rstrip(".")
        raise ModelFileError(
            f"{what} {path} asks the unpickler for more than tensors and plain containers "
            f"({reason[:160] or 'refused by torch'}); it is refused: {_RETRY_MESSAGE}."
        ) from error
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError,
            OSError, IndexError, KeyError, TypeError, AttributeError, AssertionError) as error:
        raise _unreadable(path, what, size, error) from error


def _unreadable(path: Path, what: str, size: int, error: BaseException) -> ModelFileError:
    return ModelFileError(
        f"{what} {path} ({size:,} bytes) could not be read as a PyTorch file "
        f"(truncated, corrupt or not a checkpoint: {type(error).__name__}); download it again."
    )


def _inspect_zip(path: Path, what: str, size: int) -> None:
    """Refuse TorchScript archives, foreign or compressed records and unknown globals in data.pkl."""
    with zipfile.ZipFile(path) as archive:
        records = archive.infolist()
        names = [record.filename for record in records]
        if any(_TORCHSCRIPT_RECORD.search(name) for name in names):
            raise ModelFileError(
                f"{what} {path} is a TorchScript archive, which runs code from the file when loaded; "
                f"it is refused: {_RETRY_MESSAGE}."
            )
        foreign = [name for name in names if not _TORCH_SAVE_RECORD.fullmatch(name)]
        if foreign:
            raise ModelFileError(
                f"{what} {path} is a zip file but not one torch.save writes (records {', '.join(foreign[:3])}).")
        _check_records(records, path, what, size)
        data = archive.read(f"{names[0].split('/')[0]}/data.pkl")
    _check_globals(_globals_in(io.BytesIO(data)), path, what)


def _check_records(records: List[zipfile.ZipInfo], path: Path, what: str, size: int) -> None:
    """One top folder with one data.pkl; it and the tensor records stored as is (so none outgrows the file)."""
    names = [record.filename for record in records]
    pickles = [name for name in names if name.endswith("/data.pkl") and name.count("/") == 1]
    if len(pickles) != 1 or len({name.split("/")[0] for name in names}) != 1 or len(set(names)) != len(names):
        raise ModelFileError(f"{what} {path} is a zip file but not one torch.save writes (records {', '.join(names[:3])}).")
    read = [record for record in records if record.filename == pickles[0] or "/data/" in record.filename]
    packed = [record.filename for record in read if record.compress_type != zipfile.ZIP_STORED]
    if packed or sum(record.file_size for record in read) > size:
        raise ModelFileError(
            f"{what} {path} holds compressed records ({', '.join(packed[:2]) or 'larger than the file'}), "
            "which torch.save never writes; it is refused."
        )


def _inspect_legacy(path: Path, what: str) -> None:
    """Scan the pickles of the legacy format (the raw storage bytes that follow them are not pickles)."""
    found: Set[str] = set()
    with open(path, "rb") as file:
        magic = [(opcode.name, argument) for opcode, argument, _ in pickletools.genops(file)]
        if magic[1:] != [("LONG1", torch.serialization.MAGIC_NUMBER), ("STOP", None)]:
            raise ModelFileError(f"{what} {path} is a pickle but not a PyTorch file; download it again.")
        for _ in range(_LEGACY_PICKLES - 1):
            found |= _globals_in(file)
    _check_globals(found, path, what)


def _globals_in(file: io.BufferedIOBase) -> Set[str]:
    """The ``module.name`` of every GLOBAL in the pickle at ``file``'s position (which ends after its STOP)."""
    found = set()
    for opcode, argument, _ in pickletools.genops(file):
        if opcode.name in _REFUSED_OPCODES:
            found.add(f"<{opcode.name} opcode>")
        elif opcode.name == "GLOBAL":
            module, name = argument.split(" ", 1)
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
            found.add(f"{module}.{name}")
    return found


def _check_globals(found: Set[str], path: Path, what: str) -> None:
    unknown = sorted(found - _KNOWN_GLOBALS)
    if not unknown:
        return
    name = unknown[0]
    if name.startswith(("torch.jit", "torch._C", "torch.storage._load_from_bytes", "torch.classes")):
        kind = "a nested TorchScript or serialized object, which would run code from the file"
    elif name.startswith("numpy"):
        kind = "numpy data, which can hide raw memory pointers"
    else:
        kind = "a Python object that is not model data"
    raise ModelFileError(f"{what} {path} contains {name} ({kind}); it is refused: {_RETRY_MESSAGE}.")


def _check_tensors(loaded: Any, path: Path, what: str) -> None:
    """Every tensor must be a plain CPU tensor without hooks, no larger than the storage the file gave it."""
    for key, tensor in _tensors(loaded, "", 0, set(), f"{what} {path}"):
        if tensor.layout != torch.strided or tensor.device.type != "cpu":
            raise ModelFileError(f"{what} {path}: {key or 'the tensor'} is a {tensor.layout} tensor on "
                                 f"{tensor.device}, not plain weights.")
        if tensor._backward_hooks:  # torch.save never writes hooks; these would be called on backward()
            raise ModelFileError(f"{what} {path}: {key or 'the tensor'} carries backward hooks; a crafted file, refused.")
        stored = tensor.untyped_storage().nbytes()
        if tensor.numel() * tensor.element_size() > stored:
            raise ModelFileError(
                f"{what} {path}: {key or 'the tensor'} claims {tuple(tensor.shape)} "
                f"({tensor.numel():,} elements) but the file stores only {stored:,} bytes for it; "
                "a crafted file, refused."
            )


def _tensors(value: Any, key: str, depth: int, seen: Set[int], where: str) -> Iterator[Tuple[str, torch.Tensor]]:
    if id(value) in seen:
        return
    if depth > _MAX_DEPTH:
        raise ModelFileError(f"{where} nests containers deeper than {_MAX_DEPTH} levels; it is not a checkpoint.")
    if isinstance(value, torch.Tensor):
        yield key, value
        return
    children: Optional[Iterator[Tuple[Any, Any]]] = None
    if isinstance(value, dict):
        children = iter(value.items())
    elif isinstance(value, (list, tuple, set)):
        children = enumerate(value)
    elif isinstance(value, ReleaseObject):
        children = iter({**dict(enumerate(value.args)), **value.fields}.items())
    if children is None:
        return
    seen.add(id(value))
    for child_key, child in children:
        yield from _tensors(child, f"{key}.{child_key}" if key else str(child_key), depth + 1, seen, where)
