"""Deterministic DDIM decoding (eta = 0) with the clipped x_0 prediction, as released (Song et al. 2021, eq. 12).

Legend, for the kept step t and the next cleaner kept step t' (alpha_bar_t' = 1 below the first):
    eps_theta = model(x_t, t, z_face)                          t: the ORIGINAL timestep index
    x_0      = clamp(sqrt(1/alpha_bar_t) x_t - sqrt(1/alpha_bar_t - 1) eps_theta, -1, 1)
    eps      = (sqrt(1/alpha_bar_t) x_t - x_0) / sqrt(1/alpha_bar_t - 1)   (re-derived from the CLIPPED x_0)
    x_t'     = sqrt(alpha_bar_t') x_0 + sqrt(1 - alpha_bar_t') eps

The state x_t is float32 throughout, with float32 coefficients cast from float64 as the release does.
The model is any callable ``model(x_t [B,C,H,W] float32, t [B] int64, cond) -> eps [B,C,H,W]``; whatever
dtype it computes in (e.g. a bf16 UNet, which casts its inputs itself), eps is brought back to float32.
"""

import logging
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from dva_model.progress import ProgressCallback, report
from dva_model.diffusion.schedule import DDIMCoefficients, ScheduleArray

logger = logging.getLogger(__name__)

EpsModel = Callable[[Tensor, Tensor, Tensor], Tensor]
StepIndex = Union[int, Tensor]  # position(s) in the kept steps: an int, or [B] int64 (one per item)


def sample(
    model: EpsModel,
    x_T: Tensor,
    timesteps: Sequence[int],
    *,
    cond: Tensor,
    alpha_bar: ScheduleArray,
    callback: Optional[ProgressCallback] = None,
) -> Tensor:
    """Decode x_T to x_0 with S = len(timesteps) DDIM steps (eta = 0), from the last kept step down to 0.

    x_T: [B, C, H, W] float, the state at the LAST kept step (what ``ddim_invert.invert`` returns).
    timesteps: ascending kept original steps, e.g. ``respaced_timesteps(S)``.
    cond: passed to every model call unchanged (z_face [B, 512] for the DVA UNet).
    alpha_bar: [T] float64 schedule (``alpha_bar_schedule()``).
    callback(done, total): after each of the S model calls; it may raise to cancel.
    Runs without autograd. Returns x_0 [B, C, H, W] float32 in [-1, 1] on x_T's device.
    """
    x = _check_state(x_T, "x_T")
    _warn_if_training(model)
    coefs = DDIMCoefficients.build(alpha_bar, timesteps, x.device)
    total = len(coefs.timesteps)
    with torch.no_grad():
        for done, k in enumerate(reversed(range(total)), start=1):
            x = sample_step(model, x, k, cond=cond, coefs=coefs)
            report(callback, done, total)
    return x


def sample_step(model: EpsModel, x_t: Tensor, k: StepIndex, *, cond: Tensor, coefs: DDIMCoefficients) -> Tensor:
    """One DDIM decoding step from kept step k to k - 1 (to x_0 for k = 0); autograd follows the caller.

    x_t: [B, C, H, W] float32. k: position in the kept steps, one int for the batch or [B] int64.
    Returns x_{t'} [B, C, H, W] float32.
    """
    x_0, eps = predict_clipped(model, x_t, k, cond=cond, coefs=coefs)
    return x_0 * _at(coefs.sqrt_alpha_bar_prev, k, x_t) + _at(coefs.sqrt_one_minus_alpha_bar_prev, k, x_t) * eps


def predict_clipped(
    model: EpsModel, x_t: Tensor, k: StepIndex, *, cond: Tensor, coefs: DDIMCoefficients
) -> Tuple[Tensor, Tensor]:
    """Model call at kept step k, then the clipped x_0 and the eps re-derived from it (both float32 [B,C,H,W])."""
    t = coefs.timesteps[k.to(x_t.device)] if isinstance(k, Tensor) else coefs.timesteps[k].repeat(len(x_t))  # [B]
    eps_theta = model(x_t, t, cond)
    if eps_theta.shape != x_t.shape:
        raise ValueError(f"The model returned {tuple(eps_theta.shape)} for x_t of shape {tuple(x_t.shape)}.")
    sqrt_recip = _at(coefs.sqrt_recip_alpha_bar, k, x_t)
    sqrt_recipm1 = _at(coefs.sqrt_recipm1_alpha_bar, k, x_t)
    x_0 = (sqrt_recip * x_t - sqrt_recipm1 * eps_theta.float()).clamp(-1, 1)
    eps = (sqrt_recip * x_t - x_0) / sqrt_recipm1
    return x_0, eps


def _at(values: Tensor, k: StepIndex, x: Tensor) -> Tensor:
    """values[k] shaped to broadcast over x: [] for an int k, [B, 1, 1, 1] for a [B] tensor k."""
    if isinstance(k, Tensor):
        return values[k.to(values.device)].view(-1, *([1] * (x.ndim - 1)))
    return values[k]


def _check_state(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a float tensor [B, C, H, W], got {shape}.")
    return x.float()


def _warn_if_training(model: EpsModel) -> None:
    if isinstance(model, nn.Module) and model.training:
        logger.warning("The model is in training mode: dropout makes DDIM non-deterministic; call .eval() first.")
