"""The frozen face encoders of DVA and the z_face projection (dva-reference.md sections 3.2-3.5).

``FaceEncoder`` bundles ArcFace (``idnet``), the landmark regressor (``lndnet``), the face parser
(``bgnet``) and the only trainable part, ``linear``: z_face = Linear([z_id ; z_lnd]). Its state-dict
keys are the release's ``encoder.*`` keys without ``encoder.``, except the landmark net; the release's
key layouts are mapped onto this module by ``dva_model.formats.release_keys``.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .arcface import IdentityEncoder
from .bisenet import FaceParser
from dva_model.constants import CROP_SIZE, FACE_COND_DIM, ID_DIM, LANDMARK_DIM
from .landmark_net import LandmarkEncoder


class FaceEncoder(nn.Module):
    """ArcFace + landmark regressor + face parser (all frozen) and the z_face linear layer.

    Legend: z_id [B, 512] unit ArcFace embedding; z_lnd [B, 102] 51 landmark points in [0, 1];
    z_face [B, 512] = linear(concat(z_id, z_lnd)), the UNet's condition.
    """

    def __init__(self) -> None:
        super().__init__()
        self.idnet = IdentityEncoder()
        self.lndnet = LandmarkEncoder()
        self.bgnet = FaceParser()
        self.linear = nn.Linear(ID_DIM + LANDMARK_DIM, FACE_COND_DIM)

    def encode_identity(self, x: Tensor) -> Tensor:
        """ArcFace identity: x [B, 3, H, W] float in [-1, 1] (256 aligned crops) -> z_id [B, 512] unit."""
        return self.idnet(x)

    def encode_landmarks(self, x: Tensor) -> Tensor:
        """Landmarks without the jaw: x [B, 3, H, W] float in [-1, 1] -> z_lnd [B, 102] in [0, 1].

        The regressor reads fixed pixel rows of a 256 crop, so crops of a model trained at another size
        are first resized to 256 (bilinear, antialiased), in training and inference alike.
        """
        if x.shape[-2:] != (CROP_SIZE, CROP_SIZE):
            x = F.interpolate(x, size=(CROP_SIZE, CROP_SIZE), mode="bilinear", antialias=True, align_corners=False)
        return self.lndnet(x)

    def face_condition(self, z_id: Tensor, z_lnd: Tensor) -> Tensor:
        """z_face = Linear([z_id ; z_lnd]): z_id [B, 512], z_lnd [B, 102] -> z_face [B, 512] (no activation)."""
        if z_id.ndim != 2 or z_lnd.ndim != 2 or z_id.shape[1] != ID_DIM or z_lnd.shape[1] != LANDMARK_DIM \
                or z_id.shape[0] != z_lnd.shape[0]:
            raise ValueError(f"face_condition expects z_id [B, {ID_DIM}] and z_lnd [B, {LANDMARK_DIM}] with the "
                             f"same B, got {tuple(z_id.shape)} and {tuple(z_lnd.shape)}; expand a clip-level "
                             "z_id to one row per frame.")
        return self.linear(torch.cat([z_id, z_lnd], dim=1))

    def parse(self, x: Tensor) -> Tensor:
        """Face parsing: x [B, 3, H, W] float in [-1, 1] -> labels [B, H, W] int64 in 0..18."""
        return self.bgnet(x)

    def forward(self, x: Tensor) -> Tensor:
        """Per-frame z_face as in training: x [B, 3, 256, 256] in [-1, 1] -> z_face [B, 512]."""
        return self.face_condition(self.encode_identity(x), self.encode_landmarks(x))
