"""The release's identity statistics (``latent.pkl``): the mean and spread of z_id over the training faces.

The attribute classifier was trained on identities normalised with them (``edit.classifier``), and the
download verifies the file with the same reader.
"""

from pathlib import Path
from typing import Mapping, Tuple, Union

from torch import Tensor

from dva_model.constants import ID_DIM
from dva_model.errors import ModelFileError
from dva_model.formats.safe_pickle import load_pickled


def load_identity_statistics(path: Union[str, Path]) -> Tuple[Tensor, Tensor]:
    """conds_mean, conds_std [512] float32 of the release's ``latent.pkl`` (a torch.save dict)."""
    path = Path(path)
    stats = load_pickled(path, what="The identity statistics (latent.pkl)")
    if not isinstance(stats, Mapping) or "conds_mean" not in stats or "conds_std" not in stats:
        raise ModelFileError(f"{path} holds a {type(stats).__name__} without conds_mean and conds_std; "
                             "pass the release's latent.pkl.")
    return (checked_statistic(stats["conds_mean"], "conds_mean", path),
            checked_statistic(stats["conds_std"], "conds_std", path))


def checked_statistic(value: object, name: str, path: Path) -> Tensor:
    """A per-dimension statistic of z_id as [512] float32; one sentence naming ``path`` otherwise."""
    if not isinstance(value, Tensor) or value.numel() != ID_DIM or not value.is_floating_point():
        raise ModelFileError(f"{path}: {name} must be a float tensor of {ID_DIM} numbers, not {describe_value(value)}.")
    return value.float().reshape(-1)


def describe_value(value: object) -> str:
    """"a tensor (40, 512) torch.float32", or "a dict": what a file held instead, for an error sentence."""
    return f"a tensor {tuple(value.shape)} {value.dtype}" if isinstance(value, Tensor) else f"a {type(value).__name__}"
