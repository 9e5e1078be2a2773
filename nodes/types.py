"""The pack's custom wire types and the one value type the nodes define themselves (DVA_IDENTITY).

    DVA_MODEL       nodes._host.ModelHandle: the resident DVAModel and its ComfyUI ModelPatcher
    DVA_CLASSIFIER  dva_model.edit.classifier.AttributeClassifier: attribute directions
    DVA_FACES       dva_model.tracks.AlignedClip: aligned crops, per-frame quads and warps, face flags (IMAGE
                    frames); or dva_model.tracks.FaceTracks: the same without the crops, naming its video
                    file (a VIDEO tracked from its file; the crops are cut again a chunk at a time)
    DVA_LATENT      dva_model.formats.latent_io.Latent: per-frame z_id, z_lnd, x_T, the inversion identity, steps;
                    or StoredLatent: the same in a file under ComfyUI's temp folder (with the crops), read in chunks
    DVA_IDENTITY    Identity (below): the clip identity to decode with, plus the edits to apply to it
    DVA_CLIP        nodes._host.ModelHandle around dva_model.edit.clip_loss.ClipDirectionalLoss
    DVA_IDENTITY_DELTA  dva_model.edit.clip_edit.IdentityDelta: a learnt text edit of the identity
IMAGE and MASK use ComfyUI's layouts ([B, H, W, 3] and [B, H, W] float in [0, 1] on the CPU).
"""

from dataclasses import dataclass
from typing import Any, Tuple

import torch
from comfy_api.v0_0_2 import io

MODEL = "DVA_MODEL"
CLASSIFIER = "DVA_CLASSIFIER"
FACES = "DVA_FACES"
LATENT = "DVA_LATENT"
IDENTITY = "DVA_IDENTITY"
CLIP = "DVA_CLIP"
DELTA = "DVA_IDENTITY_DELTA"

# The wire types as V3 io types (each has .Input and .Output).
Model = io.Custom(MODEL)
Classifier = io.Custom(CLASSIFIER)
Faces = io.Custom(FACES)
Latent = io.Custom(LATENT)
IdentityType = io.Custom(IDENTITY)
Clip = io.Custom(CLIP)
Delta = io.Custom(DELTA)

# Node menu categories.
CATEGORY_MODEL = "DVA/model"
CATEGORY_VIDEO = "DVA/video"
CATEGORY_ENCODE = "DVA/encode"
CATEGORY_EDIT = "DVA/edit"


@dataclass(frozen=True, kw_only=True)
class AttributeEditStep:
    """One attribute edit: move along ``classifier``'s direction ``attribute`` by ``scale``."""

    classifier: Any  # dva_model.edit.classifier.AttributeClassifier
    attribute: str
    scale: float
    norm: str  # "keep" or "unit" (dva_model.edit.classifier.EditNorm)


@dataclass(frozen=True, kw_only=True)
class Identity:
    """A clip identity and the attribute edits chained onto it (applied together by ``edited``).

    base: [512] float32, the identity before editing (the clip's mean ArcFace feature).
    """

    base: torch.Tensor
    edits: Tuple[AttributeEditStep, ...] = ()

    def with_edit(self, step: AttributeEditStep) -> "Identity":
        """A new identity with ``step`` appended (the input stays unchanged: ComfyUI caches it)."""
        return Identity(base=self.base, edits=self.edits + (step,))

    def edited(self) -> torch.Tensor:
        """z_id_edit [512] float32: the published classifier edit with every chained step at once.

        Consecutive steps on the same classifier and norm are summed in one call of
        ``dva_model.edit.classifier.edit_identity`` (so chaining A then B equals editing A and B together).
        """
        from dva_model.edit.classifier import edit_identity

        z_id, group = self.base, []
        for step in self.edits + (None,):
            if group and (step is None or step.classifier is not group[0].classifier or step.norm != group[0].norm):
                pairs = [(s.attribute, s.scale) for s in group]
                z_id = edit_identity(z_id, group[0].classifier, pairs, norm=group[0].norm)
                group = []
            if step is not None:
                group.append(step)
        return z_id
