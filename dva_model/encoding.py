"""Encoding a clip of aligned crops (reference section 2, first half): per-frame z_id and z_lnd, the clip
identity (their mean) and x_T by deterministic DDIM inversion conditioned on it, as one ``Latent``.

The expensive half of every edit; the ``encode`` command and the DVA Encode node both call ``encode_clip``.
"""

from typing import Sequence

import torch

from dva_model.formats.latent_io import Latent
from dva_model.model import DEFAULT_BATCH_SIZE, DVAModel, mean_identity
from dva_model.progress import StageProgress, no_progress


def encode_clip(
    model: DVAModel,
    crops: torch.Tensor,
    *,
    steps: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    model_id: str = "",
    frame_names: Sequence[str] = (),
    stage_progress: StageProgress = no_progress,
) -> Latent:
    """Encode aligned crops [N, 3, S, S] float in [-1, 1] into a ``Latent`` (all tensors float32, CPU).

    ``steps``: DDIM steps S of the inversion (S - 1 UNet calls per batch). ``model_id``: the model file's
    fingerprint (``FileFingerprint.model_id``), recorded to catch mix-ups. Stages: "encode", "invert".
    """
    z_id, z_lnd = model.encode_features(crops, batch_size=batch_size, callback=stage_progress("encode"))
    identity = mean_identity(z_id)
    x_T = model.invert(crops, identity, z_lnd, steps=steps, batch_size=batch_size, callback=stage_progress("invert"))
    return Latent(z_id=z_id.cpu(), z_lnd=z_lnd.cpu(), x_T=x_T.cpu(), identity=identity.cpu(), steps=steps,
                  model_id=model_id, frame_names=tuple(frame_names))
