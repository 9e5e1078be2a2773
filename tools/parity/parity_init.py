"""Random but well-behaved weights for every tensor of the reference DVA model and its classifier.

The released weights cannot be downloaded here, so parity is shown on random ones. Random nets are chaotic
unless scaled: a 10-step DDIM inversion + decode through a badly scaled UNet amplifies float32 rounding
until two correct implementations disagree. So:
- UNet convs / linears: N(0, 1/fan_in); the layers the reference zero-initialises (each ResBlock's last
  conv ``out_layers.6``, attention ``proj_out``, the output conv ``out.2``) get small random values
  instead of zeros, so those paths are exercised but the residual stream stays tame; the time / z_face
  scale-shift linears are small, so ``1 + scale`` stays near 1; GroupNorm affine near (1, 0).
- Encoders (ArcFace IR-SE50, MobileNetV2 landmark net, BiSeNet): He-scaled convs, random BatchNorm affine,
  then BatchNorm running statistics *measured* on a batch of real crops (train-mode pass with cumulative
  averaging), so every activation is unit-scaled in eval mode as in a trained net. The landmark net's last
  BatchNorm is then set so its 136 outputs sit mostly inside the (0, 1) clamp.
- ``encoder.linear`` (614 -> 512): fan-in scaled, with the 512 z_id columns amplified so an identity edit
  visibly changes z_face.
- The UNet's output head is then fitted (``fit_output_head_``) so eps ~ x_t / std(x_t) plus random
  detail: without it DDIM on a random UNet is chaotic (float32 rounding moved decoded pixels by 2/255 when
  only the batch size changed); with it, a 1e-6 input perturbation moves them by ~3e-4.
Every parameter and buffer is overwritten, none keeps a constructor default.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ZERO_INIT_GAIN = 0.25  # stand-in for the reference's zero-initialised convs
OUTPUT_CONV_GAIN = 1.5  # eps head: SiLU(GroupNorm(h)) inputs -> eps of roughly unit variance
MODULATION_GAIN = 0.3  # time / z_face scale-shift linears
GROUPNORM_JITTER = 0.1
BIAS_STD = 0.02
ID_COLUMN_GAIN = 8.0  # z_id part of encoder.linear, relative to the landmark part
PRELU_RANGE = (0.1, 0.4)
BN_WEIGHT_RANGE = (0.8, 1.2)
BN_BIAS_STD = 0.1
LANDMARK_SPREAD = 0.12  # std of the landmark outputs around the centre of the clamp range
LANDMARK_CENTRE = 0.5
ID_DIM = 512


def _normal(shape, std: float, g: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=g) * std


def _uniform(shape, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=g) * (high - low) + low


def _fan_in(weight: torch.Tensor) -> int:
    return weight.shape[1] * math.prod(weight.shape[2:]) if weight.dim() > 1 else weight.shape[0]


@torch.no_grad()
def randomize_unet_(model: nn.Module, g: torch.Generator) -> None:
    """Fill every UNet tensor (everything outside ``encoder.``) of a reference ``BeatGANsAutoencModel``."""
    for name, module in model.named_modules():
        if name == "encoder" or name.startswith("encoder."):
            continue
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            if name.endswith("out_layers.6") or name.endswith("proj_out"):
                gain = ZERO_INIT_GAIN
            elif name == "out.2":
                gain = OUTPUT_CONV_GAIN
            elif name.endswith("emb_layers.1"):  # emb_layers.1 and cond_emb_layers.1
                gain = MODULATION_GAIN
            else:
                gain = 1.0
            module.weight.copy_(_normal(module.weight.shape, gain / math.sqrt(_fan_in(module.weight)), g))
            if module.bias is not None:
                module.bias.copy_(_normal(module.bias.shape, BIAS_STD, g))
        elif isinstance(module, nn.GroupNorm):
            module.weight.copy_(1 + _normal(module.weight.shape, GROUPNORM_JITTER, g))
            module.bias.copy_(_normal(module.bias.shape, GROUPNORM_JITTER, g))
        elif list(module.parameters(recurse=False)) or list(module.buffers(recurse=False)):
            raise TypeError(f"no random init rule for UNet module {name} ({type(module).__name__})")


@torch.no_grad()
def _randomize_cnn_(net: nn.Module, g: torch.Generator) -> None:
    """He-scaled convs/linears, random BatchNorm affine and PReLU slopes for an encoder CNN."""
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.weight.copy_(_normal(module.weight.shape, math.sqrt(2.0 / _fan_in(module.weight)), g))
            if module.bias is not None:
                module.bias.copy_(_normal(module.bias.shape, BIAS_STD, g))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.affine:
                module.weight.copy_(_uniform(module.weight.shape, *BN_WEIGHT_RANGE, g))
                module.bias.copy_(_normal(module.bias.shape, BN_BIAS_STD, g))
        elif isinstance(module, nn.PReLU):
            module.weight.copy_(_uniform(module.weight.shape, *PRELU_RANGE, g))


def calibration_batch(crops: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Crops, their mirror images, a contrast-changed copy and two smooth random images: [B', 3, H, W]."""
    n, _, h, w = crops.shape
    coarse = torch.rand((2, 3, h // 32, w // 32), generator=g) * 2 - 1
    smooth = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return torch.cat([crops, crops.flip(-1), (crops * 0.7 + 0.1).clamp(-1, 1), smooth], dim=0)


@torch.no_grad()
def _calibrate_batchnorm_(wrapper: nn.Module, images: torch.Tensor) -> None:
    """Set every BatchNorm's running stats to the batch stats it sees when ``wrapper(images)`` runs.

    The reference wrappers (IDnet, LNDnet, BGnet) call ``self.backbone.eval()`` inside ``forward``; that
    call is disabled for this one pass so the BatchNorm layers can run in train mode.
    """
    backbone = wrapper.backbone
    norms = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: one pass gives exactly the batch statistics
        norm.train()
    backbone.eval = lambda: backbone  # instance attribute shadows nn.Module.eval for this pass
    try:
        wrapper(images)
    finally:
        del backbone.eval
    for norm in norms:
        norm.momentum = 0.1
        norm.eval()


@torch.no_grad()
def randomize_encoder_(encoder: nn.Module, crops: torch.Tensor, g: torch.Generator) -> None:
    """Fill the reference ``DiffusionVideoAutoencoder`` (idnet, lndnet, bgnet, linear) with random weights.

    crops: [N, 3, 256, 256] float32 in [-1, 1], real aligned faces used to measure BatchNorm statistics.
    """
    images = calibration_batch(crops, g)
    for wrapper in (encoder.idnet, encoder.lndnet, encoder.bgnet):
        _randomize_cnn_(wrapper.backbone, g)
        _calibrate_batchnorm_(wrapper, images)
    head = encoder.lndnet.backbone.linear1.bn
    head.weight.copy_(LANDMARK_SPREAD * _uniform(head.weight.shape, *BN_WEIGHT_RANGE, g))
    head.bias.copy_(LANDMARK_CENTRE + _normal(head.bias.shape, LANDMARK_SPREAD / 2, g))
    linear = encoder.linear
    weight = _normal(linear.weight.shape, 1.0 / math.sqrt(linear.in_features), g)
    weight[:, :ID_DIM] *= ID_COLUMN_GAIN
    linear.weight.copy_(weight)
    linear.bias.copy_(_normal(linear.bias.shape, BIAS_STD, g))


def identity_statistics(g: torch.Generator, count: int = 64) -> dict[str, torch.Tensor]:
    """A ``latent.pkl``-like dict: ``conds`` [count, 512] unit rows, ``conds_mean`` [512], ``conds_std`` [512].

    The rows share a common direction, as ArcFace features of aligned faces do, so the mean is not ~0.
    """
    common = F.normalize(torch.randn((1, ID_DIM), generator=g), dim=1)
    conds = F.normalize(0.6 * common + torch.randn((count, ID_DIM), generator=g) / math.sqrt(ID_DIM), dim=1)
    return {"conds": conds, "conds_mean": conds.mean(dim=0), "conds_std": conds.std(dim=0)}


@torch.no_grad()
def randomize_classifier_(cls_model: nn.Module, stats: dict[str, torch.Tensor], g: torch.Generator) -> None:
    """Random ``classifier`` and (different) ``ema_classifier`` of a reference ``ClsModel``; stats buffers."""
    for linear in (cls_model.classifier, cls_model.ema_classifier):
        linear.weight.copy_(_normal(linear.weight.shape, 1.0 / math.sqrt(linear.in_features), g))
        linear.bias.copy_(_normal(linear.bias.shape, BIAS_STD, g))
    cls_model.conds_mean.copy_(stats["conds_mean"][None, :])
    cls_model.conds_std.copy_(stats["conds_std"][None, :])


HEAD_TIMESTEPS = (0, 100, 300, 500, 700, 900)
HEAD_SILU_OFFSET = 3.0  # out.0 GroupNorm bias: SiLU works in its near-linear range
HEAD_NORM_GAIN = 0.3  # out.0 GroupNorm weight
HEAD_RANDOM_GAIN = 0.1  # random part of the output conv, on top of the fitted centre tap
HEAD_TARGET_GAIN = 1.0  # eps ~ HEAD_TARGET_GAIN * x_t / std(x_t)


@torch.no_grad()
def fit_output_head_(model: nn.Module, crops: torch.Tensor, z_face: torch.Tensor, alpha_bar: torch.Tensor,
                     g: torch.Generator) -> dict[str, float]:
    """Make the random UNet a stable, denoiser-like eps predictor: eps ~ x_t / std(x_t) plus random detail.

    A random UNet makes DDIM chaotic: with a Jacobian d eps / d x_t of order 1 in a random direction, each
    step amplifies perturbations of unclipped pixels by up to sqrt((1 - alpha_bar) / alpha_bar) (59 at
    t = 900), so float32 rounding alone moves decoded pixels by several levels. An eps close to x_t /
    std(x_t) keeps x_0 predictions insensitive to x_t at large t (as a trained denoiser's are), so two
    correct implementations agree to far below 1/255. The output conv's centre tap is fitted by least
    squares on real crops noised at ``HEAD_TIMESTEPS`` (a data-dependent init, like the BatchNorm
    calibration); its other taps and every other layer stay random, so every layer still shapes eps.

    crops: [N, 3, 256, 256] in [-1, 1]; z_face: [N, 512]; alpha_bar: [1000] float64. Returns fit stats.
    """
    head_norm, head_conv = model.out[0], model.out[2]
    head_norm.weight.copy_(HEAD_NORM_GAIN * (1 + _normal(head_norm.weight.shape, GROUPNORM_JITTER, g)))
    head_norm.bias.copy_(HEAD_SILU_OFFSET + _normal(head_norm.bias.shape, GROUPNORM_JITTER, g))
    fan_in = _fan_in(head_conv.weight)
    head_conv.weight.copy_(_normal(head_conv.weight.shape, HEAD_RANDOM_GAIN / math.sqrt(fan_in), g))
    head_conv.bias.zero_()
    captured: list[torch.Tensor] = []
    hook = head_conv.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
    features, targets, random_parts = [], [], []
    try:
        for t in HEAD_TIMESTEPS:
            a = alpha_bar[t].float()
            noise = torch.randn(crops.shape, generator=g)
            x_t = a.sqrt() * crops + (1 - a).sqrt() * noise
            t_batch = torch.full((len(crops),), t, dtype=torch.int64)
            random_parts.append(model(x=x_t, t=t_batch, cond=z_face).pred)
            features.append(captured.pop())
            targets.append(x_t / x_t.std(dim=(1, 2, 3), keepdim=True))
    finally:
        hook.remove()
    channels = features[0].shape[1]
    design = torch.cat([f.permute(0, 2, 3, 1).reshape(-1, channels) for f in features]).double()
    design = torch.cat([design, torch.ones(len(design), 1, dtype=torch.float64)], dim=1)
    target = torch.cat([HEAD_TARGET_GAIN * y - r for y, r in zip(targets, random_parts)])
    target = target.permute(0, 2, 3, 1).reshape(-1, 3).double()
    solution = torch.linalg.lstsq(design, target).solution  # [C + 1, 3]
    centre = head_conv.kernel_size[0] // 2
    head_conv.weight[:, :, centre, centre] += solution[:channels].T.float()
    head_conv.bias.copy_(solution[channels].float())
    residual = target - design @ solution
    return {"head_fit_r2": float(1 - residual.pow(2).mean() / target.pow(2).mean())}
