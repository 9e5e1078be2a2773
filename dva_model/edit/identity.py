"""Composing identity edits: CLIP deltas first, then classifier attribute directions (one order everywhere).

Every interface (the ``decode`` / ``edit`` / ``clip-edit`` commands, the edit pipeline and the nodes)
describes the edits of a clip identity z_id [512] as a sequence of ``DeltaEdit`` and ``AttributeEdit``
and composes them with ``compose_identity_edits``:

    1. every CLIP delta, in order:   z_id <- apply_delta(z_id, delta, scale, norm)   (reference section 7.2)
    2. the attribute directions:     z_id <- edit_identity(z_id, classifier, [(name, scale), ...], norm)
                                     (reference section 7.1), consecutive edits on the same classifier
                                     and norm summed in ONE call, as the published edit sums them.

``norm="keep"`` rescales each stage's result to the input's norm (a zero edit returns z_id itself);
``norm="unit"`` returns the release's unit vectors.
"""

import math
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence, Tuple, Union, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from dva_model.constants import ID_DIM
from dva_model.edit.classifier import AttributeClassifier, EditNorm, edit_identity
from dva_model.errors import UserError

NORMS: Tuple[str, ...] = get_args(EditNorm)  # ("keep", "unit")
DEFAULT_SCALE = 0.5  # the README's CLIP example ("face" -> "face with beard"); the script's own default is 1.0


@dataclass(frozen=True, kw_only=True)
class IdentityDelta:
    """A CLIP edit, reusable on any clip: ``delta`` [512] float32 plus how it was made (``info``)."""

    delta: Tensor
    source_text: str = ""
    target_text: str = ""
    info: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.delta.shape != (ID_DIM,):
            raise ValueError(f"delta must be [{ID_DIM}], got {tuple(self.delta.shape)}.")


@dataclass(frozen=True, kw_only=True)
class DeltaEdit:
    """Add ``scale`` times a CLIP identity delta ([512] tensor or ``IdentityDelta``)."""

    delta: Union[IdentityDelta, Tensor]
    scale: float
    norm: EditNorm = "keep"


@dataclass(frozen=True, kw_only=True)
class AttributeEdit:
    """Move ``scale`` along ``classifier``'s direction ``attribute``."""

    classifier: AttributeClassifier
    attribute: str
    scale: float
    norm: EditNorm = "keep"


IdentityEdit = Union[DeltaEdit, AttributeEdit]


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be 'keep' or 'unit', got {norm!r}.")


def apply_delta(z_id: Tensor, delta: Union[IdentityDelta, Tensor], *, scale: float = DEFAULT_SCALE,
                norm: EditNorm = "keep") -> Tensor:
    """z_id_edit = l2n(z_id + scale * delta) for a clip identity z_id [512] (the clip's mean identity).

    norm="unit" returns exactly the release's unit vector; "keep" (default) rescales it to |z_id| so that
    scale 0 returns z_id unchanged. Returns [512] float32 on z_id's device.
    """
    _check_norm(norm)
    vector = delta.delta if isinstance(delta, IdentityDelta) else delta
    if z_id.shape != (ID_DIM,) or vector.shape != (ID_DIM,):
        raise ValueError(f"z_id and delta must both be [{ID_DIM}], got {tuple(z_id.shape)} and {tuple(vector.shape)}.")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number, got {scale}.")
    z_id = z_id.float()
    if norm == "keep" and scale == 0:
        return z_id.clone()
    edited = F.normalize(z_id + scale * vector.to(z_id.device, torch.float32), dim=0)
    return edited * z_id.norm() if norm == "keep" else edited


def identity_edits(
    *,
    deltas: Sequence[Tuple[Union[IdentityDelta, Tensor], float]] = (),
    attributes: Sequence[Tuple[str, float]] = (),
    classifier: Optional[AttributeClassifier] = None,
    norm: EditNorm = "keep",
) -> Tuple[IdentityEdit, ...]:
    """The edit sequence of (delta, scale) and (attribute name, scale) pairs, all with one ``norm``.

    Attribute edits name directions of ``classifier``: without one this raises the one sentence every
    interface shows (before any work is done).
    """
    _check_norm(norm)
    if attributes and classifier is None:
        raise UserError("Attribute edits need an attribute classifier (the released "
                        "diffusion_video_autoencoder_cls/last.ckpt or a direction file); pass --classifier.")
    return (tuple(DeltaEdit(delta=delta, scale=scale, norm=norm) for delta, scale in deltas)
            + tuple(AttributeEdit(classifier=classifier, attribute=name, scale=scale, norm=norm)
                    for name, scale in attributes))


def compose_identity_edits(z_id: Tensor, edits: Sequence[IdentityEdit]) -> Tensor:
    """z_id_edit [512] float32: ``edits`` applied to the clip identity z_id [512] in the published order.

    CLIP deltas first (in their order, whatever their place in ``edits``), then the attribute edits;
    consecutive attribute edits on the same classifier and norm are summed in one ``edit_identity`` call
    (so chaining A then B equals editing A and B together). No edits: z_id as float32.
    """
    z_id = z_id.float()
    for edit in edits:
        if isinstance(edit, DeltaEdit):
            z_id = apply_delta(z_id, edit.delta, scale=edit.scale, norm=edit.norm)
    group: list = []
    for edit in [e for e in edits if isinstance(e, AttributeEdit)] + [None]:
        if group and (edit is None or edit.classifier is not group[0].classifier or edit.norm != group[0].norm):
            z_id = edit_identity(z_id, group[0].classifier, [(e.attribute, e.scale) for e in group],
                                 norm=group[0].norm)
            group = []
        if edit is not None:
            group.append(edit)
    return z_id
