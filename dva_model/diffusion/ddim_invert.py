"""Deterministic DDIM inversion (the eta = 0 update run towards noise), as released.

Legend, for the kept step t and the next noisier kept step t'':
    x_0, eps = clipped x_0 prediction at (x_t, t) and the eps re-derived from it (``ddim_step``)
    x_t''    = sqrt(alpha_bar_t'') x_0 + sqrt(1 - alpha_bar_t'') eps

S kept steps give S - 1 updates: the model is called at the first S - 1 kept steps and the result is the
state at the LAST kept step (t = 950 for S = 20, 999 for S = 1000), exactly where ``ddim_sample.sample``
starts. (DiffAE runs S updates, ending past the last kept step; that breaks reconstruction here.)
"""

from typing import Optional, Sequence

import torch
from torch import Tensor

from dva_model.diffusion.ddim_step import EpsModel, Sampler, check_state, coefficient_at, predict_clipped
from dva_model.diffusion.ddim_step import warn_if_training
from dva_model.diffusion.schedule import DDIMCoefficients, ScheduleArray
from dva_model.progress import ProgressCallback, report


def invert(
    model: EpsModel,
    x_0: Tensor,
    timesteps: Sequence[int],
    *,
    cond: Tensor,
    alpha_bar: ScheduleArray,
    callback: Optional[ProgressCallback] = None,
) -> Tensor:
    """Encode x_0 to the noise map x_T at the last kept step with S - 1 deterministic DDIM steps.

    x_0: [B, C, H, W] float in [-1, 1]. timesteps: ascending kept original steps (``respaced_timesteps``).
    cond: passed to every model call unchanged (z_face [B, 512]). alpha_bar: [T] float64 schedule.
    callback(done, total): after each of the S - 1 model calls; it may raise to cancel.
    Runs without autograd. Returns x_T [B, C, H, W] float32 on x_0's device (x_0 itself when S = 1).
    """
    x = check_state(x_0, "x_0")
    warn_if_training(model)
    coefs = DDIMCoefficients.build(alpha_bar, timesteps, x.device)
    total = model_calls(len(coefs.timesteps))
    with torch.no_grad():
        for k in range(total):
            x = invert_step(model, x, k, cond=cond, coefs=coefs)
            report(callback, k + 1, total)
    return x


def invert_step(model: EpsModel, x_t: Tensor, k: int, *, cond: Tensor, coefs: DDIMCoefficients) -> Tensor:
    """One inversion step from kept step k to k + 1; x_t [B, C, H, W] float32 -> float32, autograd as the caller's."""
    x_0, eps = predict_clipped(model, x_t, k, cond=cond, coefs=coefs)
    return x_0 * coefficient_at(coefs.sqrt_alpha_bar_next, k, x_t) + coefficient_at(
        coefs.sqrt_one_minus_alpha_bar_next, k, x_t) * eps


def model_calls(steps: int) -> int:
    """Model calls of ``invert`` for S = ``steps`` kept steps: S - 1 (it stops at the last kept step)."""
    return steps - 1


SAMPLER = Sampler(run=invert, model_calls=model_calls)
