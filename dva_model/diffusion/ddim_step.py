"""What the deterministic DDIM sampler and its inversion share: the model call with the clipped x_0
prediction, per-step coefficient lookup, input checks, and the ``Sampler`` record.

Legend, at kept step t (see ``ddim_sample`` and ``ddim_invert`` for the updates built on it):
    eps_theta = model(x_t, t, z_face)                          t: the ORIGINAL timestep index
    x_0      = clamp(sqrt(1/alpha_bar_t) x_t - sqrt(1/alpha_bar_t - 1) eps_theta, -1, 1)
    eps      = (sqrt(1/alpha_bar_t) x_t - x_0) / sqrt(1/alpha_bar_t - 1)   (re-derived from the CLIPPED x_0)
"""

import logging
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple, Union

from torch import Tensor, nn

from dva_model.diffusion.schedule import DDIMCoefficients, ScheduleArray
from dva_model.progress import ProgressCallback

logger = logging.getLogger(__name__)

EpsModel = Callable[[Tensor, Tensor, Tensor], Tensor]
StepIndex = Union[int, Tensor]  # position(s) in the kept steps: an int, or [B] int64 (one per item)


@dataclass(frozen=True)
class Sampler:
    """A sampling loop and the number of model calls it makes, so callers never special-case one.

    ``run(model, x, timesteps, *, cond, alpha_bar, callback=None) -> Tensor`` is the one sampler call
    shape; ``model_calls(S)`` is how many times it calls the model for S kept steps (and so how many
    times it reports progress).
    """

    run: Callable[..., Tensor]
    model_calls: Callable[[int], int]

    def __call__(self, model: EpsModel, x: Tensor, timesteps: Sequence[int], *, cond: Tensor,
                 alpha_bar: ScheduleArray, callback: Optional[ProgressCallback] = None) -> Tensor:
        return self.run(model, x, timesteps, cond=cond, alpha_bar=alpha_bar, callback=callback)


def predict_clipped(
    model: EpsModel, x_t: Tensor, k: StepIndex, *, cond: Tensor, coefs: DDIMCoefficients
) -> Tuple[Tensor, Tensor]:
    """Model call at kept step k, then the clipped x_0 and the eps re-derived from it (both float32 [B,C,H,W])."""
    t = coefs.timesteps[k.to(x_t.device)] if isinstance(k, Tensor) else coefs.timesteps[k].repeat(len(x_t))  # [B]
    eps_theta = model(x_t, t, cond)
    if eps_theta.shape != x_t.shape:
        raise ValueError(f"The model returned {tuple(eps_theta.shape)} for x_t of shape {tuple(x_t.shape)}.")
    sqrt_recip = coefficient_at(coefs.sqrt_recip_alpha_bar, k, x_t)
    sqrt_recipm1 = coefficient_at(coefs.sqrt_recipm1_alpha_bar, k, x_t)
    x_0 = (sqrt_recip * x_t - sqrt_recipm1 * eps_theta.float()).clamp(-1, 1)
    eps = (sqrt_recip * x_t - x_0) / sqrt_recipm1
    return x_0, eps


def coefficient_at(values: Tensor, k: StepIndex, x: Tensor) -> Tensor:
    """values[k] shaped to broadcast over x: [] for an int k, [B, 1, 1, 1] for a [B] tensor k."""
    if isinstance(k, Tensor):
        return values[k.to(values.device)].view(-1, *([1] * (x.ndim - 1)))
    return values[k]


def check_state(x: Tensor, name: str) -> Tensor:
    """``x`` as float32 after checking it is a float [B, C, H, W] tensor (``name`` goes in the message)."""
    if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a float tensor [B, C, H, W], got {shape}.")
    return x.float()


def warn_if_training(model: EpsModel) -> None:
    """Log a warning when ``model`` is an nn.Module in training mode (dropout breaks determinism)."""
    if isinstance(model, nn.Module) and model.training:
        logger.warning("The model is in training mode: dropout makes DDIM non-deterministic; call .eval() first.")
