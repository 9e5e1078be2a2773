"""The faster UNet paths (channels-last, torch.compile) compute what the eager fp32 UNet computes.

Tolerances are the parity harness's: x_T within 1e-3 of its largest value, decoded crops within 2/255.
Compiling the 32-px toy UNet took 343 s on the shared two-core machine (inductor generates and builds
C++ kernels), so that test runs only with DVA_COMPILE_TESTS=1; the parity-size check of the compiled path
is tools/parity/compare.py --unet-mode compile+channels-last (tools/parity/README.md).
"""

import os

import pytest
import torch

from dva_model.model import mean_identity
from dva_model.nets.unet import DVAUNet
from dva_model.nets.unet_runner import RunnerOptions, UNetRunner
from dva_model.testing import randomize_, single_thread, tiny_unet_config
from conftest import make_tiny_model

X_T_RELATIVE_TOLERANCE = 1e-3
PIXEL_TOLERANCE = 2 / 255
STEPS = 4


def _toy_unet() -> DVAUNet:
    unet = DVAUNet(tiny_unet_config())
    randomize_(unet, seed=3, output_head_gain=1.0)  # eps not dominated by the head's bias
    return unet.eval().requires_grad_(False)


def _inputs(batch: int = 2, size: int = 32):
    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn(batch, 3, size, size, generator=generator)
    t = torch.tensor([10, 900][:batch])
    z_face = torch.randn(batch, 512, generator=generator)
    return x_t, t, z_face


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_channels_last_forward_matches_eager():
    unet = _toy_unet()
    x_t, t, z_face = _inputs()
    with torch.no_grad(), single_thread():
        eager = unet(x_t, t, z_face)
        runner = UNetRunner(unet, RunnerOptions(channels_last=True))
        fast = runner(x_t, t, z_face)
    assert unet.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.is_contiguous() and fast.shape == eager.shape
    assert _relative(fast, eager) < 1e-5


def test_channels_last_model_inverts_and_decodes_within_parity_tolerance():
    """The whole DVAModel path (features, DDIM inversion, decoding) on 256-px crops, eager vs channels-last."""
    crops = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(1)) * 2 - 1
    results = []
    with single_thread():
        for channels_last in (False, True):
            model = make_tiny_model(seed=5).prepare(channels_last=channels_last)
            z_id, z_lnd = model.encode_features(crops)
            x_T = model.invert(crops, mean_identity(z_id), z_lnd, steps=STEPS, batch_size=2)
            results.append((x_T, model.decode(x_T, mean_identity(z_id), z_lnd, steps=STEPS, batch_size=2)))
    (x_T_eager, decoded_eager), (x_T_fast, decoded_fast) = results
    assert _relative(x_T_fast, x_T_eager) < X_T_RELATIVE_TOLERANCE
    assert float((decoded_fast - decoded_eager).abs().max()) / 2 < PIXEL_TOLERANCE  # [-1, 1] -> [0, 1]
    assert not torch.equal(x_T_eager, crops)  # the inversion did move the crops


@pytest.mark.skipif(not os.environ.get("DVA_COMPILE_TESTS"),
                    reason="compiling takes minutes on a small CPU; set DVA_COMPILE_TESTS=1 to run it")
def test_compiled_forward_matches_eager():
    unet = _toy_unet()
    x_t, t, z_face = _inputs()
    with torch.no_grad():
        eager = unet(x_t, t, z_face)
        runner = UNetRunner(unet, RunnerOptions(compile=True, channels_last=True))
        fast = runner(x_t, t, z_face)
        again = runner(x_t, t, z_face)  # the compiled code, no recompiling
    assert list(runner.compile_seconds) == [tuple(x_t.shape)] and runner.compile_seconds[tuple(x_t.shape)] > 0
    assert _relative(fast, eager) < 1e-5 and torch.equal(fast, again)


def test_cuda_graphs_need_a_cuda_model():
    with pytest.raises(ValueError, match="CUDA graphs need the model on a CUDA device; it is on cpu"):
        UNetRunner(_toy_unet(), RunnerOptions(cuda_graphs=True))


def test_every_named_mode_is_described_by_its_name():
    from dva_model.nets.unet_runner import RUNNER_MODES

    assert all(options.describe() == name for name, options in RUNNER_MODES.items())


def test_describe_names_the_mode():
    assert RunnerOptions().describe() == "eager"
    assert RunnerOptions(compile=True, channels_last=True).describe() == "compile+channels-last"
    assert RunnerOptions(cuda_graphs=True).describe() == "cuda-graphs"
