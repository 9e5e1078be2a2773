"""Attribute directions and the published classifier edit (paper section 3.3; reference section 7.1).

A linear attribute classifier on NORMALISED ArcFace features, ``(z - mean) / std``, gives one
direction per attribute: its weight row ``w_k``. An edit of the clip identity ``z_id`` by scales
``s_k`` is

    z      = (z_id - mean) / std
    z'     = z + sum_k s_k * sqrt(512) * w_k / |w_k|
    z_edit = l2_normalise(z' * std + mean)                      (the release: "unit" norm)

The release returns a unit vector even at s = 0, while the unedited ``z_id`` (a mean of unit vectors)
is shorter; decoding with it then differs slightly from plain reconstruction. Our default ("keep")
rescales the result to the norm of ``z_id``, so a zero edit returns ``z_id`` itself and small edits
stay close to the reconstruction; ``norm="unit"`` reproduces the release exactly.
"""

import difflib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from dva_model.constants import CELEBA_ATTRIBUTES, DIRECTIONS_FORMAT, ID_DIM
from dva_model.errors import ModelFileError, UserError
from dva_model.formats.files import read_safetensors, write_safetensors
from dva_model.formats.identity_stats import checked_statistic, describe_value, load_identity_statistics
from dva_model.formats.safe_pickle import load_pickled

EditNorm = Literal["keep", "unit"]
MAX_DIRECTIONS = 1024  # rows a direction file may hold (the release: 40); checked before names are made


@dataclass(frozen=True, kw_only=True)
class AttributeClassifier:
    """Directions of a linear attribute classifier on normalised identity features.

    weight: [K, 512] float32 (one row per attribute); mean, std: [512] float32 identity statistics;
    attribute_names: K names, in row order.
    """

    weight: Tensor
    mean: Tensor
    std: Tensor
    attribute_names: Tuple[str, ...]

    def index(self, name: str) -> int:
        """Row of attribute ``name`` (case-insensitive); a close-match hint for unknown names."""
        lowered = [n.lower() for n in self.attribute_names]
        if name.lower() in lowered:
            return lowered.index(name.lower())
        close = difflib.get_close_matches(name, self.attribute_names, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else f" Known: {', '.join(self.attribute_names)}."
        raise UserError(f"Unknown attribute {name!r}.{hint}")

    def direction(self, name: str) -> Tensor:
        """Unit direction [512] of attribute ``name`` in the normalised feature space."""
        w = self.weight[self.index(name)]
        return w / w.norm()

    def check_edits(self, edits: Sequence[Tuple[str, float]]) -> None:
        """Refuse unknown attribute names, non-finite scales, and directions or statistics that are not
        finite (NaN weights, a zero row) before any work: they would give black faces, not an error."""
        for name, scale in edits:
            self.index(name)
            if not math.isfinite(scale):
                raise UserError(f"The scale of the {name} edit is {scale}; use a finite number such as 0.25.")
            if not torch.isfinite(self.direction(name)).all():
                raise UserError(f"The classifier's {name} direction is not a finite vector (NaN, infinite or zero "
                                f"weights); the classifier file is damaged, use another.")
        if edits and not (torch.isfinite(self.mean).all() and torch.isfinite(self.std).all() and (self.std > 0).all()):
            raise UserError("The classifier's feature mean or std holds NaN, infinite or non-positive values; "
                            "the classifier (or latent statistics) file is damaged, use another.")


def load_classifier(path: Union[str, Path], *, latent_stats: Optional[Union[str, Path]] = None) -> AttributeClassifier:
    """Read the released classifier ``last.ckpt`` or our direction ``.safetensors``.

    The release's checkpoint carries ``conds_mean`` / ``conds_std`` of its own, which take precedence
    over ``latent.pkl`` (``latent_stats``), as in the release, where loading the checkpoint
    overwrites the buffers the pickle set. Editing uses the non-EMA ``classifier.*`` weights.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(
            f"The attribute classifier {path} does not exist; put the released "
            "checkpoints/diffusion_video_autoencoder_cls/last.ckpt there."
        )
    if path.suffix == ".safetensors":
        return _load_directions(path)
    checkpoint = load_pickled(path, what="The attribute classifier")
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping) or "classifier.weight" not in state:
        raise ModelFileError(f"{path} is not an attribute classifier checkpoint (no classifier.weight).")
    weight = _checked_weight(state["classifier.weight"], path)
    mean, std = state.get("conds_mean"), state.get("conds_std")
    if (mean is None or std is None) and latent_stats is not None:
        mean, std = load_identity_statistics(latent_stats)
    if mean is None or std is None:
        raise ModelFileError(f"{path} has no conds_mean/conds_std; pass the release's latent.pkl as well.")
    mean, std = checked_statistic(mean, "conds_mean", path), checked_statistic(std, "conds_std", path)
    names = CELEBA_ATTRIBUTES if len(weight) == len(CELEBA_ATTRIBUTES) else tuple(f"attr_{i}" for i in range(len(weight)))
    return _checked(weight, mean, std, names, path)


def _checked_weight(weight: object, path: Path) -> Tensor:
    """classifier.weight as [K, 512] float32, K at most MAX_DIRECTIONS, checked before anything uses K."""
    if not isinstance(weight, Tensor) or weight.ndim != 2 or weight.shape[1] != ID_DIM \
            or not 1 <= weight.shape[0] <= MAX_DIRECTIONS or not weight.is_floating_point():
        raise ModelFileError(f"{path}: classifier.weight must be a float [K, {ID_DIM}] tensor with K from 1 to "
                             f"{MAX_DIRECTIONS}, not {describe_value(weight)}.")
    return weight.float()


def _load_directions(path: Path) -> AttributeClassifier:
    tensors, metadata = read_safetensors(path, what="direction file", error=ModelFileError)
    if metadata.get("format") != DIRECTIONS_FORMAT or not {"weight", "mean", "std"} <= tensors.keys():
        raise ModelFileError(f"{path} is not a DVA direction file (expected weight, mean, std and format {DIRECTIONS_FORMAT}).")
    try:
        names = json.loads(metadata.get("attribute_names", ""))
    except json.JSONDecodeError as error:
        raise ModelFileError(f"{path}: its attribute_names metadata is not valid JSON ({error}).") from error
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ModelFileError(f"{path}: its attribute_names metadata must be a list of names.")
    weight = _checked_weight(tensors["weight"], path)
    mean, std = checked_statistic(tensors["mean"], "mean", path), checked_statistic(tensors["std"], "std", path)
    return _checked(weight, mean, std, tuple(names), path)


def save_directions(path: Union[str, Path], classifier: AttributeClassifier) -> Path:
    """Write directions as ``.safetensors`` (atomically), readable by ``load_classifier``."""
    tensors = {"weight": classifier.weight, "mean": classifier.mean, "std": classifier.std}
    metadata = {"format": DIRECTIONS_FORMAT, "attribute_names": json.dumps(list(classifier.attribute_names))}
    return write_safetensors(path, tensors, metadata)


def _checked(weight: Tensor, mean: Tensor, std: Tensor, names, path: Path) -> AttributeClassifier:
    if weight.ndim != 2 or weight.shape[1] != ID_DIM or mean.shape != (ID_DIM,) or std.shape != (ID_DIM,):
        raise ModelFileError(
            f"{path}: expected weight [K, {ID_DIM}] and mean/std [{ID_DIM}], got "
            f"{tuple(weight.shape)}, {tuple(mean.shape)}, {tuple(std.shape)}."
        )
    if len(names) != len(weight):
        raise ModelFileError(f"{path}: {len(names)} attribute names for {len(weight)} directions.")
    return AttributeClassifier(weight=weight, mean=mean, std=std, attribute_names=tuple(names))


def parse_edit(text: str) -> Tuple[str, float]:
    """``"Mustache:0.25"`` -> ("Mustache", 0.25); a UserError for anything else."""
    name, sep, scale = text.rpartition(":")
    try:
        if not sep or not name:
            raise ValueError
        value = float(scale)
    except ValueError:
        raise UserError(f"Edit {text!r} is not NAME:SCALE (for example Mustache:0.25 or No_Beard:-0.5).") from None
    if not math.isfinite(value):
        raise UserError(f"Edit {text!r}: the scale is not a finite number; use e.g. Mustache:0.25.")
    return name, value


def edit_identity(
    z_id: Tensor,
    classifier: AttributeClassifier,
    edits: Sequence[Tuple[str, float]],
    *,
    norm: EditNorm = "keep",
) -> Tensor:
    """Move the clip identity along attribute directions (the published formula, module docstring).

    z_id: [512] float (the clip's mean identity). edits: (attribute name, scale) pairs; several are
    summed in the normalised space. Returns z_id_edit [512] float32 on z_id's device.
    """
    if norm not in ("keep", "unit"):
        raise ValueError(f"norm must be 'keep' or 'unit', got {norm!r}.")
    if z_id.shape != (ID_DIM,):
        raise ValueError(f"z_id must be [{ID_DIM}], got {tuple(z_id.shape)}.")
    classifier.check_edits(edits)
    z_id = z_id.float()
    if norm == "keep" and all(scale == 0 for _, scale in edits):
        return z_id.clone()
    mean, std = classifier.mean.to(z_id.device), classifier.std.to(z_id.device)
    z = (z_id - mean) / std
    for name, scale in edits:
        z = z + scale * math.sqrt(ID_DIM) * classifier.direction(name).to(z_id.device)
    z_edit = z * std + mean
    z_edit = z_edit / z_edit.norm()
    if norm == "keep":
        z_edit = z_edit * z_id.norm()
    return z_edit
