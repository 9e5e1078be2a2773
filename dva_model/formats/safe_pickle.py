"""Loading pickled PyTorch files without running code from them.

The released checkpoints are pickles: a Lightning ``.ckpt`` carries, beside its tensors, the
training configuration as instances of the authors' own classes (``config.TrainConfig``, enums...).
Plain ``torch.load(weights_only=True)`` rejects those, and ``weights_only=False`` would import and run
whatever the file names. Here every global the pickle asks for is either on a short allow-list
(tensor and storage rebuilders, containers, numpy scalars) or replaced by an inert ``OpaqueObject``
that only records the arguments and state it was given. Nothing outside the allow-list is imported.
"""

import io
import pickle
import types
import zipfile
from pathlib import Path
from typing import Any, Dict, Tuple

import torch

from dva_model.errors import ModelFileError

# (module, name) pairs a checkpoint may resolve to the real object. All are data constructors.
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
    ("_codecs", "encode"),  # protocol-2 pickles spell bytes as _codecs.encode(str, "latin1")
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("builtins", "complex"),
    ("torch", "Size"),
    ("torch", "device"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor_v3"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch._utils", "_rebuild_qtensor"),
    ("torch.serialization", "_get_layout"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
}
_TORCH_DTYPES = {name for name in dir(torch) if isinstance(getattr(torch, name), torch.dtype)}
_TORCH_STORAGES = {name for name in dir(torch) if name.endswith("Storage")}


class OpaqueObject:
    """Stand-in for a class the pickle names but we refuse to import: keeps args and state only."""

    _qualified_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "OpaqueObject":
        instance = super().__new__(cls)
        instance.__dict__["_args"] = args
        return instance

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["_kwargs"] = kwargs

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}  # (dict, slots) form
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_state"] = state

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"{self._qualified_name} (not imported) has no field {name!r}")

    def __repr__(self) -> str:
        fields = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        return f"<opaque {self._qualified_name} args={self._args!r} fields={sorted(fields)}>"


_opaque_classes: Dict[Tuple[str, str], type] = {}


def _opaque_class(module: str, name: str) -> type:
    key = (module, name)
    if key not in _opaque_classes:
        _opaque_classes[key] = type(name, (OpaqueObject,), {"_qualified_name": f"{module}.{name}"})
    return _opaque_classes[key]


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only allow-listed globals and stubs out everything else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and (name in _TORCH_DTYPES or name in _TORCH_STORAGES):
            return getattr(torch, name)
        if module == "torch.storage" and name in ("UntypedStorage", "TypedStorage", "_load_from_bytes"):
            if name == "_load_from_bytes":
                return lambda data: torch.load(io.BytesIO(data), weights_only=False, pickle_module=_MODULE)
            return getattr(torch.storage, name)
        return _opaque_class(module, name)


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


# torch.load wants a "pickle module": something with Unpickler and load.
_MODULE = types.ModuleType("dva_model_restricted_pickle")
_MODULE.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
_MODULE.load = _restricted_load  # type: ignore[attr-defined]
_MODULE.__dict__["loads"] = lambda data, **kw: _restricted_load(io.BytesIO(data), **kw)


def load_pickled(path: Path, *, what: str) -> Any:
    """Load a ``torch.save`` file (zip or legacy format) onto the CPU without executing its code.

    ``what`` names the expected content for error messages ("the DVA checkpoint"...).
    Raises ModelFileError with one sentence for a missing, empty, truncated or foreign file.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{what} {path} does not exist.")
    size = path.stat().st_size
    if size == 0:
        raise ModelFileError(f"{what} {path} is empty (0 bytes); download it again.")
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_MODULE)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError,
            OSError, IndexError, KeyError, TypeError, AttributeError) as error:
        raise ModelFileError(
            f"{what} {path} ({size:,} bytes) could not be read as a PyTorch file "
            f"(truncated, corrupt or not a checkpoint: {type(error).__name__}); download it again."
        ) from error
