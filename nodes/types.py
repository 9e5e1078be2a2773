"""The pack's custom wire types and the one value type the nodes define themselves (DVA_IDENTITY).

    DVA_MODEL       nodes._host.ModelHandle: the resident DVAModel and its ComfyUI ModelPatcher
    DVA_CLASSIFIER  dva_model.edit.classifier.AttributeClassifier: attribute directions
    DVA_FACES       dva_model.face.align.AlignedClip: aligned crops, per-frame quads and warps, face flags
    DVA_LATENT      dva_model.formats.latent_io.Latent: per-frame z_id, z_lnd, x_T, the inversion identity, steps
    DVA_IDENTITY    Identity (below): the clip identity to decode with, plus the edits to apply to it
IMAGE and MASK use ComfyUI's layouts ([B, H, W, 3] and [B, H, W] float in [0, 1] on the CPU).
"""

from dataclasses import dataclass
from typing import Any, Tuple

import torch

MODEL = "DVA_MODEL"
CLASSIFIER = "DVA_CLASSIFIER"
FACES = "DVA_FACES"
LATENT = "DVA_LATENT"
IDENTITY = "DVA_IDENTITY"


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
