"""An encoded clip on disk: per-frame features and noise maps as one ``.safetensors`` file.

Inversion is the expensive half of an edit; saving its result lets a clip be re-edited later
without it. Tensors (all float32):

    z_id      [N, 512]        per-frame ArcFace identity
    z_lnd     [N, 102]        per-frame landmark feature
    x_T       [N, 3, H, W]    DDIM-inverted noise maps
    identity  [512]           the identity the inversion was conditioned on (the clip mean, as published)

Metadata: the step count of the inversion, a fingerprint of the model file and the frame names.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Tuple, Union

import torch
from torch import Tensor

from dva_model.constants import ID_DIM, LANDMARK_DIM
from dva_model.errors import UserError
from dva_model.formats.files import read_safetensors, write_safetensors

LATENT_FORMAT = "dva-latent/1"


@dataclass(frozen=True, kw_only=True)
class Latent:
    """A clip's encoding (shapes in the module docstring)."""

    z_id: Tensor
    z_lnd: Tensor
    x_T: Tensor
    identity: Tensor
    steps: int
    model_id: str = ""
    frame_names: Tuple[str, ...] = field(default_factory=tuple)
    source_folder: str = ""  # the aligned crops folder it was encoded from ("" when unknown)

    def __post_init__(self) -> None:
        n = len(self.x_T)
        if self.z_id.shape != (n, ID_DIM) or self.z_lnd.shape != (n, LANDMARK_DIM) or self.identity.shape != (ID_DIM,):
            raise ValueError(
                f"Inconsistent latent: z_id {tuple(self.z_id.shape)}, z_lnd {tuple(self.z_lnd.shape)}, "
                f"x_T {tuple(self.x_T.shape)}, identity {tuple(self.identity.shape)}."
            )
        if self.frame_names and len(self.frame_names) != n:
            raise ValueError(f"{len(self.frame_names)} frame names for {n} frames.")


def save_latent(path: Union[str, Path], latent: Latent) -> Path:
    """Write ``latent`` to ``path`` (safetensors, atomically: a temporary file renamed into place)."""
    tensors = {name: getattr(latent, name).to(torch.float32)
               for name in ("z_id", "z_lnd", "x_T", "identity")}
    metadata = {
        "format": LATENT_FORMAT,
        "steps": str(latent.steps),
        "model_id": latent.model_id,
        "frame_names": json.dumps(list(latent.frame_names)),
        "source_folder": latent.source_folder,
    }
    return write_safetensors(path, tensors, metadata)


def load_latent(path: Union[str, Path]) -> Latent:
    """Read a file written by ``save_latent``; a UserError naming the file for anything else."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"The latent file {path} does not exist; create it with `python -m dva_model encode`.")
    tensors, metadata = read_safetensors(path, what="latent file")
    if metadata.get("format") != LATENT_FORMAT:
        raise UserError(f"{path} is not a DVA latent file (format {metadata.get('format')!r}, expected {LATENT_FORMAT}).")
    try:
        frame_names = json.loads(metadata.get("frame_names", "[]"))
        if not isinstance(frame_names, list) or not all(isinstance(name, str) for name in frame_names):
            raise ValueError("frame_names is not a list of names")
        if tensors["x_T"].ndim != 4 or tensors["x_T"].shape[1] != 3:
            raise ValueError(f"x_T is {tuple(tensors['x_T'].shape)}, not [N, 3, H, W]")
        return Latent(
            z_id=tensors["z_id"], z_lnd=tensors["z_lnd"], x_T=tensors["x_T"], identity=tensors["identity"],
            steps=int(metadata["steps"]), model_id=metadata.get("model_id", ""), frame_names=tuple(frame_names),
            source_folder=metadata.get("source_folder", ""),
        )
    except (KeyError, ValueError, TypeError) as error:
        raise UserError(f"{path} is an incomplete DVA latent file ({error}).") from error
