"""The DDPM noise schedule of the release and its DDIM respacing (Ho et al. 2020; Song et al. 2021).

Legend (paper symbols):
    beta_t          noise added at training step t, linear from 1e-4 to 0.02 over T = 1000 steps
    alpha_bar_t     prod_{s <= t} (1 - beta_s): x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps
    kept steps      the S original indices a respaced DDIM run visits, ascending (always including 0)

Everything here is float64 (numpy's arithmetic, as released); the samplers cast per-step coefficients to
float32 exactly where the release does.
"""

from dataclasses import dataclass
from typing import List, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from dva_model.constants import BETA_END, BETA_START, NUM_TRAIN_TIMESTEPS

ScheduleArray = Union[Tensor, np.ndarray]


def beta_schedule() -> Tensor:
    """Linear betas [1000] float64 from 1e-4 to 0.02 (numpy.linspace, as released)."""
    return torch.from_numpy(np.linspace(BETA_START, BETA_END, NUM_TRAIN_TIMESTEPS, dtype=np.float64))


def alpha_bar_schedule() -> Tensor:
    """alpha_bar_t = cumprod(1 - beta_t): [1000] float64 in (0, 1), decreasing; index = original timestep."""
    betas = beta_schedule().numpy()
    return torch.from_numpy(np.cumprod(1.0 - betas, axis=0))


def _stride_for(num_steps: int) -> int:
    """The release's rule: the smallest integer stride s with len(range(0, 1000, s)) == num_steps, or 0."""
    for stride in range(1, NUM_TRAIN_TIMESTEPS):
        if len(range(0, NUM_TRAIN_TIMESTEPS, stride)) == num_steps:
            return stride
    return 0


def valid_step_counts() -> List[int]:
    """Every step count S the release's "ddimS" respacing accepts, ascending (2..36, 38, ..., 500, 1000)."""
    counts = {len(range(0, NUM_TRAIN_TIMESTEPS, s)) for s in range(1, NUM_TRAIN_TIMESTEPS)}
    return sorted(counts)


def respaced_timesteps(num_steps: int) -> List[int]:
    """Kept original timesteps of an S-step DDIM run, ascending: [0, s, 2s, ...] with the release's stride.

    s is the smallest integer stride giving exactly S steps (S = 20 keeps 0..950, S = 100 keeps 0..990).
    S values no integer stride produces (e.g. 37, 41, 1, 999) raise ValueError naming the nearest valid
    counts, as the release rejects them too.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
        raise TypeError(f"num_steps must be an int, got {type(num_steps).__name__}.")
    stride = _stride_for(int(num_steps))
    if not stride:
        valid = valid_step_counts()
        below = [n for n in valid if n < num_steps][-1:]
        above = [n for n in valid if n > num_steps][:1]
        nearest = " or ".join(str(n) for n in below + above)
        raise ValueError(
            f"{num_steps} DDIM steps cannot be spaced evenly over {NUM_TRAIN_TIMESTEPS} timesteps with an "
            f"integer stride (the released rule); use {nearest} instead."
        )
    return list(range(0, NUM_TRAIN_TIMESTEPS, stride))


def respaced_alpha_bar(alpha_bar: ScheduleArray, timesteps: Sequence[int]) -> np.ndarray:
    """alpha_bar at the kept steps [S] float64, re-derived through respaced betas as the release does.

    The release builds a new diffusion with beta'_k = 1 - alpha_bar[t_k] / alpha_bar[t_{k-1}] and takes
    cumprod(1 - beta'); this equals alpha_bar[timesteps] up to float64 round-off, and reproducing it keeps
    our float32 coefficients bit-identical to the release's.
    """
    full = _as_float64_schedule(alpha_bar)
    _check_timesteps(timesteps, len(full))
    previous, new_betas = 1.0, []
    for t in timesteps:
        new_betas.append(1.0 - full[t] / previous)
        previous = full[t]
    return np.cumprod(1.0 - np.array(new_betas, dtype=np.float64), axis=0)


@dataclass(frozen=True)
class DDIMCoefficients:
    """Per-kept-step float32 coefficients [S] of the eta = 0 DDIM update, on one device.

    Index k is the position in the ascending kept steps; ``timesteps[k]`` is the original index the UNet
    is called with. "prev" is the next cleaner kept step (alpha_bar = 1 below the first), "next" the next
    noisier one (alpha_bar = 0 above the last; never used by inversion, which stops there).
    """

    timesteps: Tensor  # [S] int64 original timestep indices
    sqrt_recip_alpha_bar: Tensor  # sqrt(1 / alpha_bar_t)
    sqrt_recipm1_alpha_bar: Tensor  # sqrt(1 / alpha_bar_t - 1)
    sqrt_alpha_bar_prev: Tensor
    sqrt_one_minus_alpha_bar_prev: Tensor
    sqrt_alpha_bar_next: Tensor
    sqrt_one_minus_alpha_bar_next: Tensor

    @classmethod
    def build(cls, alpha_bar: ScheduleArray, timesteps: Sequence[int], device: torch.device) -> "DDIMCoefficients":
        """Coefficients for ``timesteps`` (ascending original indices) of the schedule ``alpha_bar`` [T] float64.

        Float64 quantities are cast to float32 and the square roots of alpha_bar_prev / next are then
        taken in float32, in the release's order of operations.
        """
        kept = respaced_alpha_bar(alpha_bar, timesteps)  # [S] float64

        def f32(values: np.ndarray) -> Tensor:
            return torch.from_numpy(values).to(device).float()

        alpha_bar_prev = f32(np.append(1.0, kept[:-1]))
        alpha_bar_next = f32(np.append(kept[1:], 0.0))
        return cls(
            timesteps=torch.tensor(list(timesteps), dtype=torch.int64, device=device),
            sqrt_recip_alpha_bar=f32(np.sqrt(1.0 / kept)),
            sqrt_recipm1_alpha_bar=f32(np.sqrt(1.0 / kept - 1)),
            sqrt_alpha_bar_prev=torch.sqrt(alpha_bar_prev),
            sqrt_one_minus_alpha_bar_prev=torch.sqrt(1 - alpha_bar_prev),
            sqrt_alpha_bar_next=torch.sqrt(alpha_bar_next),
            sqrt_one_minus_alpha_bar_next=torch.sqrt(1 - alpha_bar_next),
        )


def _as_float64_schedule(alpha_bar: ScheduleArray) -> np.ndarray:
    if isinstance(alpha_bar, Tensor):
        if alpha_bar.dtype != torch.float64:
            raise ValueError(
                f"alpha_bar must be float64 (the release's precision), got {alpha_bar.dtype}; keep the "
                f"schedule out of model-wide .to(dtype) casts or pass alpha_bar_schedule() directly."
            )
        alpha_bar = alpha_bar.detach().cpu().numpy()
    alpha_bar = np.asarray(alpha_bar)
    if alpha_bar.dtype != np.float64 or alpha_bar.ndim != 1:
        raise ValueError(f"alpha_bar must be a 1-D float64 array, got {alpha_bar.dtype} {alpha_bar.shape}.")
    if not ((alpha_bar > 0) & (alpha_bar <= 1)).all():
        raise ValueError("alpha_bar must lie in (0, 1]; pass alpha_bar_schedule() or an equivalent schedule.")
    return alpha_bar


def _check_timesteps(timesteps: Sequence[int], length: int) -> None:
    steps = tuple(int(t) for t in timesteps)
    if not steps or any(b <= a for a, b in zip(steps, steps[1:])) or steps[0] < 0 or steps[-1] >= length:
        raise ValueError(
            f"timesteps must be a non-empty, strictly ascending list of indices in 0..{length - 1} "
            f"(e.g. respaced_timesteps(S)), got {list(steps)[:8]}{'...' if len(steps) > 8 else ''}."
        )
