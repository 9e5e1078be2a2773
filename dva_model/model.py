"""The Diffusion Video Autoencoder as one resident bundle: the UNet and its frozen face encoders.

``DVAModel`` owns no maths of its own. It feeds frames through the encoders and the DDIM samplers
in batches (many frames per UNet call), in the precision the weights were loaded in, and reports
progress after every UNet call. Paper symbols (Kim et al., CVPR 2023, section 3):

    z_id   [N, 512]  ArcFace identity of each frame (unit length); the clip's identity is their mean
    z_lnd  [N, 102]  landmark feature of each frame (51 points, jaw dropped)
    z_face [N, 512]  Linear([z_id ; z_lnd]), the condition of every UNet ResBlock
    x_T    [N, 3, H, W]  DDIM-inverted noise map holding everything else (background, lighting...)
"""

from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Tuple

import torch
from torch import Tensor, nn

from dva_model.diffusion import ddim_invert

from dva_model.diffusion import ddim_sample
from dva_model.constants import ID_DIM
from dva_model.nets.face_encoder import FaceEncoder
from dva_model.progress import ProgressCallback, report
from dva_model.diffusion.schedule import alpha_bar_schedule, respaced_timesteps
from dva_model.nets.unet import DVAUNet, UNetConfig

DEFAULT_BATCH_SIZE = 8


@dataclass(frozen=True, kw_only=True)
class DVAConfig:
    """Everything needed to rebuild a ``DVAModel``'s modules (the encoders have one fixed shape)."""

    unet: UNetConfig


def _batches(count: int, batch_size: int) -> Iterator[slice]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    for start in range(0, count, batch_size):
        yield slice(start, min(start + batch_size, count))


class _StepCounter:
    """Turns per-chunk sampler callbacks into one running count over all chunks."""

    def __init__(self, callback: Optional[ProgressCallback], total: int):
        self.callback, self.total, self.done = callback, total, 0

    def __call__(self, _done: int, _total: int) -> None:
        self.done += 1
        report(self.callback, self.done, self.total)


def _calls_per_chunk(timesteps, *, inversion: bool) -> int:
    """UNet calls of one sampler run: inversion takes S - 1 steps of an S-step schedule, decoding S."""
    return len(timesteps) - 1 if inversion else len(timesteps)


def inversion_calls(steps: int, frames: int, batch_size: int) -> int:
    """How many UNet calls ``DVAModel.invert`` makes for ``frames`` crops (its progress total)."""
    chunks = -(-frames // batch_size)
    return _calls_per_chunk(respaced_timesteps(steps), inversion=True) * chunks


class DVAModel(nn.Module):
    """UNet + face encoders; state-dict keys ``unet.*`` and ``encoder.*`` (see docs/architecture.md)."""

    def __init__(self, *, config: DVAConfig):
        super().__init__()
        self.config = config
        self.unet = DVAUNet(config.unet)
        self.encoder = FaceEncoder()
        self.register_buffer("alpha_bar", alpha_bar_schedule(), persistent=False)

    @property
    def image_size(self) -> int:
        return self.config.unet.image_size

    def _unet_dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def _device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def _eps_model(self) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
        """The UNet as the samplers call it: fp32 state in, fp32 epsilon out, weights' dtype inside."""
        dtype = self._unet_dtype()

        def eps(x_t: Tensor, t: Tensor, z_face: Tensor) -> Tensor:
            return self.unet(x_t.to(dtype), t, z_face.to(dtype)).float()

        return eps

    def _encoder_input(self, crops: Tensor) -> Tensor:
        return crops.to(self._device(), next(self.encoder.parameters()).dtype)

    @torch.no_grad()
    def encode_features(
        self,
        crops: Tensor,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        callback: Optional[ProgressCallback] = None,
    ) -> Tuple[Tensor, Tensor]:
        """ArcFace identity and landmark feature of every aligned crop.

        crops: [N, 3, H, W] float in [-1, 1]. Returns (z_id [N, 512] unit length, z_lnd [N, 102] in
        [0, 1]), float32 on the model's device.
        """
        _check_crops(crops)
        z_id, z_lnd = [], []
        chunks = list(_batches(len(crops), batch_size))
        for index, chunk in enumerate(chunks):
            x = self._encoder_input(crops[chunk])
            z_id.append(self.encoder.encode_identity(x).float())
            z_lnd.append(self.encoder.encode_landmarks(x).float())
            report(callback, index + 1, len(chunks))
        return torch.cat(z_id), torch.cat(z_lnd)

    def face_condition(self, z_id: Tensor, z_lnd: Tensor) -> Tensor:
        """z_face [N, 512] = Linear([z_id ; z_lnd]); z_id is [512] (one for all frames) or [N, 512]."""
        z_id = _per_frame_identity(z_id, len(z_lnd)).to(self._device())
        weight_dtype = self.encoder.linear.weight.dtype
        z_face = self.encoder.face_condition(z_id.to(weight_dtype), z_lnd.to(self._device(), weight_dtype))
        return z_face.float()

    @torch.no_grad()
    def invert(
        self,
        crops: Tensor,
        z_id: Tensor,
        z_lnd: Tensor,
        *,
        steps: int,
        batch_size: int = DEFAULT_BATCH_SIZE,
        callback: Optional[ProgressCallback] = None,
    ) -> Tensor:
        """Deterministic DDIM inversion of every crop (S - 1 steps of an S-step schedule).

        crops: [N, 3, H, W] in [-1, 1]; z_id: [512] (the published choice: the clip's mean identity)
        or [N, 512]; z_lnd: [N, 102]. Returns x_T [N, 3, H, W] float32 on the model's device.
        """
        _check_crops(crops)
        timesteps = respaced_timesteps(steps)
        return self._run_sampler(ddim_invert.invert, crops, z_id, z_lnd, timesteps, batch_size, callback)

    @torch.no_grad()
    def decode(
        self,
        x_T: Tensor,
        z_id: Tensor,
        z_lnd: Tensor,
        *,
        steps: int,
        batch_size: int = DEFAULT_BATCH_SIZE,
        callback: Optional[ProgressCallback] = None,
    ) -> Tensor:
        """DDIM decoding (eta = 0) of every frame's noise map under a (possibly edited) identity.

        x_T: [N, 3, H, W]; z_id: [512] or [N, 512]; z_lnd: [N, 102].
        Returns crops [N, 3, H, W] float32 in [-1, 1] on the model's device.
        """
        timesteps = respaced_timesteps(steps)
        return self._run_sampler(ddim_sample.sample, x_T, z_id, z_lnd, timesteps, batch_size, callback)

    def _run_sampler(self, sampler, x, z_id, z_lnd, timesteps, batch_size, callback) -> Tensor:
        if len(z_lnd) != len(x):
            raise ValueError(f"z_lnd has {len(z_lnd)} frames but the images have {len(x)}; pass one per frame.")
        chunks = list(_batches(len(x), batch_size))
        counter = _StepCounter(callback, _calls_per_chunk(timesteps, inversion=sampler is ddim_invert.invert) * len(chunks))
        z_id = _per_frame_identity(z_id, len(x))
        eps_model, out = self._eps_model(), []
        for chunk in chunks:
            z_face = self.face_condition(z_id[chunk], z_lnd[chunk])
            x_chunk = x[chunk].to(self._device(), torch.float32)
            out.append(sampler(eps_model, x_chunk, timesteps, cond=z_face, alpha_bar=self.alpha_bar,
                               callback=counter))
        return torch.cat(out)

    @torch.no_grad()
    def parse(self, crops: Tensor, *, batch_size: int = DEFAULT_BATCH_SIZE,
              callback: Optional[ProgressCallback] = None) -> Tensor:
        """BiSeNet face parsing: crops [N, 3, H, W] in [-1, 1] -> labels [N, H, W] int64 in 0..18.

        ``callback(done, total)`` after every batch (it may raise to cancel).
        """
        _check_crops(crops)
        chunks, labels = list(_batches(len(crops), batch_size)), []
        for index, chunk in enumerate(chunks):
            labels.append(self.encoder.parse(self._encoder_input(crops[chunk])))
            report(callback, index + 1, len(chunks))
        return torch.cat(labels)


def mean_identity(z_id: Tensor) -> Tensor:
    """The clip's time-invariant identity: the mean of per-frame z_id [N, 512] -> [512].

    Not re-normalised, as published (its norm is slightly below 1).
    """
    if z_id.ndim != 2 or z_id.shape[1] != ID_DIM:
        raise ValueError(f"z_id must be [N, {ID_DIM}], got {tuple(z_id.shape)}.")
    return z_id.mean(dim=0)


def _per_frame_identity(z_id: Tensor, count: int) -> Tensor:
    if z_id.ndim == 1:
        return z_id.unsqueeze(0).expand(count, -1)  # [512] -> [N, 512]
    if z_id.ndim == 2 and len(z_id) == count:
        return z_id
    raise ValueError(f"z_id must be [{ID_DIM}] or [{count}, {ID_DIM}], got {tuple(z_id.shape)}.")


def _check_crops(crops: Tensor) -> None:
    if crops.ndim != 4 or crops.shape[1] != 3:
        raise ValueError(f"crops must be [N, 3, H, W] in [-1, 1], got shape {tuple(crops.shape)}.")
