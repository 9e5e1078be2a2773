"""Random-weight helpers for tests, benchmarks and parity checks (no real weights exist on CI machines).

``randomize_`` gives every parameter and persistent buffer a random, non-trivial value (also the layers
an architecture zero-initialises, and normalisation affines / running statistics), so that a file saved
from it exercises every tensor, while keeping a random DVA UNet well-behaved: with every weight drawn at
one small scale a random UNet of this shape is chaotic and float32 round-off swamps a 10-step
invert/decode. Fan-in-scaled convolutions and linears with small last layers of each residual branch
keep each block close to its skip path, like a trained network.

The output head is smaller still. DDIM decoding from the last kept step computes
x_0 = sqrt(1/alpha_bar) x_T - sqrt(1/alpha_bar - 1) eps with sqrt(1/alpha_bar - 1) ~ 100 at t = 950, so
any change of eps between the inversion's last call and the decoder's first is amplified a hundredfold.
A trained UNet keeps eps consistent along the trajectory; a random one cannot, so its eps must vary
little with x_t and t for decode(invert(x)) to reconstruct x (measured on ``tiny_unet_config``, seed 0:
head gain 0.1 -> ~9 dB at 10 steps, 0.01 -> ~18 dB, 0.001 -> ~40 dB).
"""

import contextlib
import dataclasses
import math
from typing import Iterator, Optional

import torch
from torch import Tensor, nn

from dva_model.nets.unet import DVAUNet, UNetConfig

WEIGHT_GAIN = 1.0  # std of a conv / linear weight times sqrt(fan_in): variance-preserving
RESIDUAL_OUT_GAIN = 0.1  # same for a residual branch's last layer (zero-initialised in the architecture)
OUTPUT_HEAD_GAIN = 0.001  # same for a DVA UNet's output conv: eps nearly smooth in (x_t, t), see below
BIAS_STD = 0.05
NORM_AFFINE_STD = 0.1  # GroupNorm / BatchNorm / LayerNorm: weight 1 + N(0, s), bias N(0, s)
RUNNING_MEAN_STD = 0.1
RUNNING_VAR_RANGE = (0.5, 1.5)
OTHER_PARAM_STD = 0.1  # parameters of any other kind of module (e.g. PReLU slopes)
MAX_COUNT_BUFFER = 1000  # integer buffers such as BatchNorm's num_batches_tracked

_NORMS = (nn.GroupNorm, nn.LayerNorm, nn.modules.batchnorm._NormBase)
_WEIGHTED = (nn.Linear, nn.modules.conv._ConvNd)


def randomize_(module: nn.Module, *, seed: int, output_head_gain: float = OUTPUT_HEAD_GAIN) -> nn.Module:
    """Fill every parameter and persistent buffer of ``module`` in place with seeded random values.

    Conv / linear weights ~ N(0, 1 / fan_in); layers marked ``zero_initialised`` (residual branch
    outputs, see ``dva_model.nets.unet``) get 0.1x that and a DVA UNet's output conv ``output_head_gain``x
    (0.001 keeps invert/decode reconstructing; compare single forwards with e.g. 1.0, where eps is not
    dominated by the head's bias); biases ~ N(0, 0.05); norm weights 1 + N(0, 0.1),
    norm biases N(0, 0.1); running means N(0, 0.1), running variances U(0.5, 1.5); integer buffers a
    random count; any other parameter N(0, 0.1). Non-persistent buffers (constants of the method) are
    left alone. Values are drawn on the CPU in float32, so the result does not depend on the module's
    device or dtype. Returns ``module``.
    """
    generator = torch.Generator().manual_seed(seed)
    heads = {id(m.out[-1]) for m in module.modules() if isinstance(m, DVAUNet)}

    def normal(like: Tensor, mean: float, std: float) -> Tensor:
        return torch.randn(like.shape, generator=generator) * std + mean

    with torch.no_grad():
        for submodule in module.modules():
            for name, param in submodule.named_parameters(recurse=False):
                head_gain = output_head_gain if id(submodule) in heads else None
                param.copy_(_random_parameter(submodule, name, param, normal, head_gain))
            for name, buffer in submodule.named_buffers(recurse=False):
                if name in submodule._non_persistent_buffers_set or buffer is None:
                    continue
                buffer.copy_(_random_buffer(name, buffer, normal, generator))
    return module


def _random_parameter(module: nn.Module, name: str, param: Tensor, normal, head_gain: Optional[float]) -> Tensor:
    if isinstance(module, _WEIGHTED):
        if name == "weight":
            fan_in = param[0].numel()
            if head_gain is not None:
                gain = head_gain
            elif getattr(module, "zero_initialised", False):
                gain = RESIDUAL_OUT_GAIN
            else:
                gain = WEIGHT_GAIN
            return normal(param, 0.0, gain / math.sqrt(fan_in))
        return normal(param, 0.0, BIAS_STD)
    if isinstance(module, _NORMS):
        return normal(param, 1.0 if name == "weight" else 0.0, NORM_AFFINE_STD)
    return normal(param, 0.0, OTHER_PARAM_STD)


def _random_buffer(name: str, buffer: Tensor, normal, generator: torch.Generator) -> Tensor:
    if not buffer.is_floating_point():
        return torch.randint(1, MAX_COUNT_BUFFER, buffer.shape, generator=generator)
    if name == "running_var":
        low, high = RUNNING_VAR_RANGE
        return torch.rand(buffer.shape, generator=generator) * (high - low) + low
    return normal(buffer, 0.0, RUNNING_MEAN_STD)


def tiny_unet_config() -> UNetConfig:
    """A DVA UNet of the released structure at toy size: 32x32, widths 32-64, 4 levels, attention at 8x8.

    Same block layout as the release (ResBlock up/down sampling, attention after each ResBlock at one
    resolution and in the middle, z_face of the real width 512). Widths are multiples of 32 because the
    decoder's concatenated widths (e.g. 64 + 32) must divide into min(32, C) groups.
    """
    return UNetConfig(
        image_size=32,
        model_channels=32,
        channel_mult=(1, 1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(8,),
        embed_channels=64,
    )


def tiny_crop_unet_config(size: int = 256) -> UNetConfig:
    """The released UNet structure at toy width on real ``size`` crops (the encoders need 256 crops).

    Width 8 keeps every GroupNorm at <= 32 channels (one channel a group), so the decoder's
    concatenations divide evenly, and a 256 x 256 forward stays cheap on a CPU.
    """
    return dataclasses.replace(tiny_unet_config(), image_size=size, model_channels=8, channel_mult=(1, 1, 2, 2),
                               attention_resolutions=(size // 8,))


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch's CPU ops on one thread inside the block, then restore the thread count.

    For small models on shared machines: with more runnable processes than cores, OpenMP's barriers stall
    and a tiny UNet forward takes seconds on 2 threads instead of ~0.1 s on one.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
