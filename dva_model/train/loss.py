"""The published training objective of a Diffusion Video Autoencoder (Kim et al., CVPR 2023, section 3.3).

Legend (paper symbols), per frame x_0 of a batch:
    t               timestep drawn uniformly from 0..999, the SAME for both noises of a frame
    eps_1, eps_2    two independent standard-normal noises
    x_t^k           sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps_k          (forward process)
    eps_hat_k       UNet(x_t^k, t, z_face(x_0)), z_face from the frame's own identity and landmarks
    x0_hat_k        sqrt(1 / alpha_bar_t) x_t^k - sqrt(1 / alpha_bar_t - 1) eps_hat_k   (not clamped)
    M               the "training" face-parsing foreground of x_0 (all classes but background, cloth, hat)

    L_simple = mean|eps_1 - eps_hat_1| + mean|eps_2 - eps_hat_2|      (L1, over every element)
    L_reg    = mean|x0_hat_1 * M - x0_hat_2 * M|                      (over every element of C x H x W)
    L        = L_simple + L_reg

L_reg asks two noisy views of one frame to predict the same face: whatever differs between them (the
noise) must not leak into the face region, which pushes identity and motion into z_face.
"""

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from dva_model.constants import NUM_TRAIN_TIMESTEPS

# eps_model(x_t [2N, 3, H, W], t [2N] int64) -> eps_hat [2N, 3, H, W]: both noisy views in ONE call, the
# condition of frame n repeated for rows n and N + n (so a data-parallel wrapper sees one forward).
EpsModel = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class LossTerms:
    """The objective and its two parts, each a float32 scalar tensor (``loss`` carries the graph)."""

    loss: Tensor
    simple: Tensor
    reg: Tensor


def draw_noise(x_0: Tensor, generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """Draw (t [N] int64 uniform in 0..999, eps_1, eps_2 [N, 3, H, W] standard normal) for frames x_0.

    Everything comes from ``generator`` (on x_0's device), so a step's randomness is reproducible.
    """
    t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (len(x_0),), generator=generator, device=x_0.device)
    eps = torch.randn((2, *x_0.shape), generator=generator, device=x_0.device, dtype=torch.float32)
    return t, eps[0], eps[1]


def _at(schedule: Tensor, t: Tensor) -> Tensor:
    """schedule[t] computed in float64 and cast to float32, shaped [N, 1, 1, 1] (as the release does)."""
    return schedule.to(t.device)[t].float().view(-1, 1, 1, 1)


def dva_loss(
    eps_model: EpsModel,
    x_0: Tensor,
    mask: Tensor,
    *,
    t: Tensor,
    eps_1: Tensor,
    eps_2: Tensor,
    alpha_bar: Tensor,
) -> LossTerms:
    """L_simple + L_reg of the paper (see the module legend) for one batch of frames.

    eps_model: called once on both noisy views, see ``EpsModel``; its output may be any float dtype.
    x_0: [N, 3, H, W] float32 in [-1, 1]; mask: [N, 1, H, W] float {0, 1}, the training foreground of x_0;
    t: [N] int64 in 0..999; eps_1, eps_2: [N, 3, H, W] float32; alpha_bar: [1000] float64 schedule.
    """
    if x_0.ndim != 4 or mask.shape != (x_0.shape[0], 1, *x_0.shape[2:]):
        raise ValueError(
            f"x_0 must be [N, 3, H, W] and mask [N, 1, H, W] of the same N, H, W; got {tuple(x_0.shape)} "
            f"and {tuple(mask.shape)}."
        )
    if alpha_bar.dtype != torch.float64:
        raise ValueError(f"alpha_bar must be the float64 schedule (alpha_bar_schedule()), got {alpha_bar.dtype}.")
    sqrt_ab, sqrt_one_minus_ab = _at(alpha_bar.sqrt(), t), _at((1 - alpha_bar).sqrt(), t)
    sqrt_recip_ab, sqrt_recipm1_ab = _at((1 / alpha_bar).sqrt(), t), _at((1 / alpha_bar - 1).sqrt(), t)

    x_t = torch.cat([sqrt_ab * x_0 + sqrt_one_minus_ab * eps_1, sqrt_ab * x_0 + sqrt_one_minus_ab * eps_2])
    eps_hat_1, eps_hat_2 = eps_model(x_t, torch.cat([t, t])).float().chunk(2)  # [2N, ...] -> 2 x [N, ...]
    x_t_1, x_t_2 = x_t.chunk(2)

    simple = (eps_1 - eps_hat_1).abs().mean() + (eps_2 - eps_hat_2).abs().mean()
    x0_hat_1 = sqrt_recip_ab * x_t_1 - sqrt_recipm1_ab * eps_hat_1
    x0_hat_2 = sqrt_recip_ab * x_t_2 - sqrt_recipm1_ab * eps_hat_2
    reg = (x0_hat_1 * mask - x0_hat_2 * mask).abs().mean()
    return LossTerms(loss=simple + reg, simple=simple.detach(), reg=reg.detach())
