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
class Identity:
    """A clip identity and the edits chained onto it (composed together by ``edited``).

    base: [512] float32, the identity before editing (the clip's mean ArcFace feature).
    edits: ``dva_model.edit.identity`` DeltaEdit / AttributeEdit steps, in node order.
    """

    base: torch.Tensor
    edits: Tuple[Any, ...] = ()

    def with_edit(self, step) -> "Identity":
        """A new identity with ``step`` appended (the input stays unchanged: ComfyUI caches it)."""
        return Identity(base=self.base, edits=self.edits + (step,))

    def edited(self) -> torch.Tensor:
        """z_id_edit [512] float32: every chained edit composed in the published order (CLIP deltas first,
        then the attribute directions; see ``dva_model.edit.identity.compose_identity_edits``)."""
        from dva_model.edit.identity import compose_identity_edits

        return compose_identity_edits(self.base, self.edits)
