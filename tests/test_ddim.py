"""DDIM decoding and inversion (eta = 0, clipped x_0) against hand-written references and properties.

- a float64 transcription of the published update (dva-reference.md, section 5) on a smooth dummy model;
- the release's float32 arithmetic (float64 coefficient arrays cast per step), reproduced bit for bit;
- a closed form: for a model that knows the data is one point x*, decoding returns x* from any x_T;
- decode(invert(x)) reconstructs x with the tiny random UNet, and fails when inversion overshoots.
"""

import math

import numpy as np
import pytest
import torch

from dva_model.diffusion import ddim_invert

from dva_model.diffusion import ddim_sample
from dva_model.progress import Cancelled
from dva_model.diffusion.schedule import DDIMCoefficients, alpha_bar_schedule, respaced_timesteps
from dva_model.testing import randomize_, single_thread, tiny_unet_config
from dva_model.nets.unet import DVAUNet

ALPHA_BAR = alpha_bar_schedule()
SHAPE = (2, 3, 8, 8)
# Golden sums of the dummy-model runs below (10 steps), from this implementation once its agreement with
# the float64 reference and the release's arithmetic was established; they pin the numbers down.
GOLDEN_DECODE_SUM, GOLDEN_DECODE_ABS_SUM = -59.803757, 166.75166
GOLDEN_INVERT_SUM, GOLDEN_INVERT_ABS_SUM = 99.72792, 292.14197


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


def dummy_eps(x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """Smooth, nonlinear in x_t, depends on t and cond; elementwise per batch item; keeps the input dtype."""
    scale = (0.5 + t.to(x_t.dtype) / 1000).view(-1, 1, 1, 1)
    return torch.tanh(1.5 * x_t) * scale + 0.2 * cond[:, :3, None, None].to(x_t.dtype)


def float64_reference(x, kept, cond, *, invert: bool, clip: bool = True):
    """The published update in float64, with alpha_bar read straight off the schedule at the kept steps."""
    alpha_bar = ALPHA_BAR.numpy()
    x = x.double()
    order = range(len(kept) - 1) if invert else reversed(range(len(kept)))
    clipped = 0
    for i in order:
        a = alpha_bar[kept[i]]
        if invert:
            a_to = alpha_bar[kept[i + 1]]
        else:
            a_to = alpha_bar[kept[i - 1]] if i > 0 else 1.0
        eps = dummy_eps(x, torch.full((len(x),), kept[i]), cond)
        x0 = math.sqrt(1 / a) * x - math.sqrt(1 / a - 1) * eps
        clipped += int((x0.abs() > 1).sum())
        if clip:
            x0 = x0.clamp(-1, 1)
        eps = (math.sqrt(1 / a) * x - x0) / math.sqrt(1 / a - 1)
        x = math.sqrt(a_to) * x0 + math.sqrt(1 - a_to) * eps
    return x, clipped


def release_arithmetic(x, kept, cond, *, invert: bool):
    """The release's casts: respaced float64 arrays, values cast to float32 per step, float32 sqrt of alpha_bar."""
    alpha_bar = ALPHA_BAR.numpy()
    last, betas = 1.0, []
    for t in kept:  # the release re-derives betas for the kept steps, then takes their cumprod
        betas.append(1 - alpha_bar[t] / last)
        last = alpha_bar[t]
    ac = np.cumprod(1.0 - np.array(betas))
    arrays = {
        "recip": np.sqrt(1.0 / ac), "recipm1": np.sqrt(1.0 / ac - 1),
        "prev": np.append(1.0, ac[:-1]), "next": np.append(ac[1:], 0.0),
    }
    pick = lambda name, i: torch.from_numpy(arrays[name])[torch.full((len(x),), i)].float().view(-1, 1, 1, 1)  # noqa: E731
    order = range(len(kept) - 1) if invert else reversed(range(len(kept)))
    for i in order:
        eps = dummy_eps(x, torch.full((len(x),), kept[i]), cond)
        x0 = (pick("recip", i) * x - pick("recipm1", i) * eps).clamp(-1, 1)
        eps = (pick("recip", i) * x - x0) / pick("recipm1", i)
        a_to = pick("next" if invert else "prev", i)
        x = x0 * torch.sqrt(a_to) + torch.sqrt(1 - a_to) * eps
    return x


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(SHAPE, generator=g)
    x_0 = torch.rand(SHAPE, generator=g) * 1.8 - 0.9
    cond = torch.randn(SHAPE[0], 512, generator=g)
    return x_T, x_0, cond


@pytest.mark.parametrize("steps", [5, 20])
def test_decoding_matches_the_published_formula(data, steps):
    x_T, _, cond = data
    kept = respaced_timesteps(steps)
    ours = ddim_sample.sample(dummy_eps, x_T, kept, cond=cond, alpha_bar=ALPHA_BAR)
    expected, clipped = float64_reference(x_T, kept, cond, invert=False)
    unclipped, _ = float64_reference(x_T, kept, cond, invert=False, clip=False)
    assert ours.dtype == torch.float32 and ours.shape == SHAPE
    assert clipped > 0 and (unclipped - expected).abs().max() > 0.1  # the clip matters for this input
    assert (ours.double() - expected).abs().max() < 1e-4


@pytest.mark.parametrize("steps", [5, 20])
def test_inversion_matches_the_published_formula(data, steps):
    _, x_0, cond = data
    kept = respaced_timesteps(steps)
    ours = ddim_invert.invert(dummy_eps, x_0, kept, cond=cond, alpha_bar=ALPHA_BAR)
    expected, _ = float64_reference(x_0, kept, cond, invert=True)
    assert ours.dtype == torch.float32 and ours.shape == SHAPE
    assert (ours.double() - expected).abs().max() < 1e-4


def test_float32_arithmetic_is_the_releases_bit_for_bit(data):
    x_T, x_0, cond = data
    kept = respaced_timesteps(10)
    decoded = ddim_sample.sample(dummy_eps, x_T, kept, cond=cond, alpha_bar=ALPHA_BAR)
    inverted = ddim_invert.invert(dummy_eps, x_0, kept, cond=cond, alpha_bar=ALPHA_BAR)
    assert torch.equal(decoded, release_arithmetic(x_T, kept, cond, invert=False))
    assert torch.equal(inverted, release_arithmetic(x_0, kept, cond, invert=True))
    for value, expected in [
        (decoded.sum(), GOLDEN_DECODE_SUM), (decoded.abs().sum(), GOLDEN_DECODE_ABS_SUM),
        (inverted.sum(), GOLDEN_INVERT_SUM), (inverted.abs().sum(), GOLDEN_INVERT_ABS_SUM),
    ]:
        assert value.item() == pytest.approx(expected, rel=1e-5)


def test_a_model_that_knows_the_data_point_decodes_to_it_and_inverts_in_closed_form(data):
    x_T, _, _ = data
    x_star = torch.linspace(-0.9, 0.9, 8 * 8 * 3 * 2).reshape(SHAPE).double()
    alpha_bar = ALPHA_BAR

    def oracle(x_t, t, cond):  # the exact eps when all data is x*
        a = alpha_bar[t].view(-1, 1, 1, 1)
        return ((x_t.double() - a.sqrt() * x_star) / (1 - a).sqrt()).float()

    kept = respaced_timesteps(20)
    decoded = ddim_sample.sample(oracle, x_T, kept, cond=None, alpha_bar=ALPHA_BAR)
    assert (decoded.double() - x_star).abs().max() < 1e-5
    a0, a_last = alpha_bar[0], alpha_bar[kept[-1]]
    e = x_star * (1 - a0.sqrt()) / (1 - a0).sqrt()  # the eps seen at t = 0, constant along the path
    inverted = ddim_invert.invert(oracle, x_star.float(), kept, cond=None, alpha_bar=ALPHA_BAR)
    assert (inverted.double() - (a_last.sqrt() * x_star + (1 - a_last).sqrt() * e)).abs().max() < 1e-5


def test_the_model_sees_the_original_timesteps_in_order(data):
    x_T, x_0, cond = data
    seen = []

    def recording(x_t, t, c):
        assert t.dtype == torch.int64 and t.shape == (len(x_t),) and x_t.dtype == torch.float32 and c is cond
        seen.append(t.tolist())
        return dummy_eps(x_t, t, c)

    ddim_sample.sample(recording, x_T, respaced_timesteps(20), cond=cond, alpha_bar=ALPHA_BAR)
    assert seen == [[t, t] for t in range(950, -1, -50)]
    seen.clear()
    ddim_invert.invert(recording, x_0, respaced_timesteps(20), cond=cond, alpha_bar=ALPHA_BAR)
    assert seen == [[t, t] for t in range(0, 901, 50)]  # S - 1 calls, ending at the state of t = 950


def test_callback_once_per_model_call_and_it_can_cancel(data):
    x_T, x_0, cond = data
    kept = respaced_timesteps(10)
    for run, calls in [(ddim_sample.sample, 10), (ddim_invert.invert, 9)]:
        reports = []
        run(dummy_eps, x_T, kept, cond=cond, alpha_bar=ALPHA_BAR, callback=lambda d, n: reports.append((d, n)))
        assert reports == [(i, calls) for i in range(1, calls + 1)]

        model_calls = []

        def counting(x_t, t, c):
            model_calls.append(1)
            return dummy_eps(x_t, t, c)

        def cancel_at_three(done, total):
            if done == 3:
                raise Cancelled()

        with pytest.raises(Cancelled):
            run(counting, x_0, kept, cond=cond, alpha_bar=ALPHA_BAR, callback=cancel_at_three)
        assert len(model_calls) == 3


def test_one_kept_step(data):
    x_T, x_0, cond = data
    assert torch.equal(ddim_invert.invert(dummy_eps, x_0, [0], cond=cond, alpha_bar=ALPHA_BAR), x_0)
    decoded = ddim_sample.sample(dummy_eps, x_T, [0], cond=cond, alpha_bar=ALPHA_BAR)
    assert (decoded.double() - float64_reference(x_T, [0], cond, invert=False)[0]).abs().max() < 1e-5


def test_a_half_precision_model_keeps_the_state_in_float32(data):
    x_T, _, cond = data
    kept = respaced_timesteps(5)
    half = ddim_sample.sample(lambda x, t, c: dummy_eps(x, t, c).bfloat16(), x_T.double(), kept,
                              cond=cond, alpha_bar=ALPHA_BAR)
    full = ddim_sample.sample(dummy_eps, x_T, kept, cond=cond, alpha_bar=ALPHA_BAR)
    assert half.dtype == torch.float32 and (half - full).abs().max() < 0.05


def test_one_step_per_item_equals_separate_steps(data):
    x_T, _, cond = data
    coefs = DDIMCoefficients.build(ALPHA_BAR, respaced_timesteps(10), x_T.device)
    together = ddim_sample.sample_step(dummy_eps, x_T, torch.tensor([3, 7]), cond=cond, coefs=coefs)
    apart = [ddim_sample.sample_step(dummy_eps, x_T[i:i + 1], k, cond=cond[i:i + 1], coefs=coefs)
             for i, k in enumerate([3, 7])]
    assert torch.equal(together, torch.cat(apart))


def test_bad_inputs_are_rejected(data):
    x_T, _, cond = data
    with pytest.raises(ValueError, match="float64"):
        ddim_sample.sample(dummy_eps, x_T, [0, 500], cond=cond, alpha_bar=ALPHA_BAR.float())
    with pytest.raises(ValueError, match="ascending"):
        ddim_invert.invert(dummy_eps, x_T, [500, 0], cond=cond, alpha_bar=ALPHA_BAR)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        ddim_sample.sample(dummy_eps, x_T[0], [0, 500], cond=cond, alpha_bar=ALPHA_BAR)


@pytest.fixture(scope="module")
def tiny_unet():
    return randomize_(DVAUNet(tiny_unet_config()), seed=0).eval()


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(4 / ((a - b) ** 2).mean().item())  # images in [-1, 1]: peak-to-peak 2


@pytest.mark.parametrize("steps, min_psnr", [(5, 38.0), (10, 35.0)])
def test_decode_of_invert_reconstructs_with_a_random_unet(tiny_unet, steps, min_psnr):
    g = torch.Generator().manual_seed(7)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    z_face = torch.randn(2, 512, generator=g)
    kept = respaced_timesteps(steps)
    x_T = ddim_invert.invert(tiny_unet, x, kept, cond=z_face, alpha_bar=ALPHA_BAR)
    assert _psnr(ddim_sample.sample(tiny_unet, x_T, kept, cond=z_face, alpha_bar=ALPHA_BAR), x) > min_psnr
    if steps == 5:  # DiffAE's S inversion steps end past the decoder's start: reconstruction breaks
        overshoot = ddim_invert.invert(tiny_unet, x, kept + [999], cond=z_face, alpha_bar=ALPHA_BAR)
        assert _psnr(ddim_sample.sample(tiny_unet, overshoot, kept, cond=z_face, alpha_bar=ALPHA_BAR), x) < 20
