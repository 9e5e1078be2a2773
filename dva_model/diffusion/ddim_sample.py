"""Deterministic DDIM decoding (eta = 0) with the clipped x_0 prediction, as released (Song et al. 2021, eq. 12).

Legend, for the kept step t and the next cleaner kept step t' (alpha_bar_t' = 1 below the first):
    x_0, eps = clipped x_0 prediction at (x_t, t) and the eps re-derived from it (``ddim_step``)
    x_t'     = sqrt(alpha_bar_t') x_0 + sqrt(1 - alpha_bar_t') eps

The state x_t is float32 throughout, with float32 coefficients cast from float64 as the release does.
The model is any callable ``model(x_t [B,C,H,W] float32, t [B] int64, cond) -> eps [B,C,H,W]``; whatever
dtype it computes in (e.g. a bf16 UNet, which casts its inputs itself), eps is brought back to float32.
"""

from typing import Iterator, Optional, Sequence

import torch
from torch import Tensor

from dva_model.diffusion.ddim_step import (
    EpsModel, Sampler, StepIndex, check_state, coefficient_at, predict_clipped, warn_if_training,
)
from dva_model.diffusion.schedule import DDIMCoefficients, ScheduleArray
from dva_model.progress import ProgressCallback, report


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
    x, total = check_state(x_T, "x_T"), model_calls(len(timesteps))
    for done, x in enumerate(trajectory(model, x, timesteps, cond=cond, alpha_bar=alpha_bar), start=1):
        report(callback, done, total)
    return x


def trajectory(
    model: EpsModel, x_T: Tensor, timesteps: Sequence[int], *, cond: Tensor, alpha_bar: ScheduleArray
) -> Iterator[Tensor]:
    """The states ``sample`` passes through: x at each cleaner kept step, the last one x_0 (S states,
    each [B, C, H, W] float32; computed without autograd one at a time, as they are consumed)."""
    x = check_state(x_T, "x_T")
    warn_if_training(model)
    coefs = DDIMCoefficients.build(alpha_bar, timesteps, x.device)
    for k in reversed(range(len(coefs.timesteps))):
        with torch.no_grad():
            x = sample_step(model, x, k, cond=cond, coefs=coefs)
        yield x


def sample_step(model: EpsModel, x_t: Tensor, k: StepIndex, *, cond: Tensor, coefs: DDIMCoefficients) -> Tensor:
    """One DDIM decoding step from kept step k to k - 1 (to x_0 for k = 0); autograd follows the caller.

    x_t: [B, C, H, W] float32. k: position in the kept steps, one int for the batch or [B] int64.
    Returns x_{t'} [B, C, H, W] float32.
    """
    x_0, eps = predict_clipped(model, x_t, k, cond=cond, coefs=coefs)
    return x_0 * coefficient_at(coefs.sqrt_alpha_bar_prev, k, x_t) + coefficient_at(
        coefs.sqrt_one_minus_alpha_bar_prev, k, x_t) * eps


def model_calls(steps: int) -> int:
    """Model calls of ``sample`` for S = ``steps`` kept steps: one per step."""
    return steps


SAMPLER = Sampler(run=sample, model_calls=model_calls)
