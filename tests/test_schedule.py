"""The linear DDPM schedule and the release's "ddimS" respacing rule."""

import numpy as np
import pytest
import torch

from dva_model.diffusion.schedule import (
    alpha_bar_schedule,
    beta_schedule,
    respaced_alpha_bar,
    respaced_timesteps,
    valid_step_counts,
)

# The step counts the release accepts (dva-reference.md, section 5), written out independently.
RELEASE_VALID_COUNTS = list(range(2, 37)) + [
    38, 39, 40, 42, 44, 46, 48, 50, 53, 56, 59, 63, 67, 72, 77, 84, 91, 100, 112, 125, 143, 167, 200, 250,
    334, 500, 1000,
]


def test_betas_are_linear_from_1e4_to_002_in_float64():
    betas = beta_schedule()
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert betas[0] == 1e-4 and betas[-1] == 0.02
    assert torch.allclose(betas.diff(), torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64), atol=1e-17)


def test_alpha_bar_is_the_cumulative_product():
    alpha_bar = alpha_bar_schedule()
    assert alpha_bar.dtype == torch.float64 and alpha_bar.shape == (1000,)
    product, expected = 1.0, []
    for t in range(1000):
        product *= 1.0 - (1e-4 + t * (0.02 - 1e-4) / 999)
        expected.append(product)
    assert torch.allclose(alpha_bar, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    assert 4.0e-5 < alpha_bar[-1] < 4.1e-5  # the familiar end of the linear schedule


@pytest.mark.parametrize(
    "steps, expected",
    [
        (5, [0, 200, 400, 600, 800]),
        (10, [0, 100, 200, 300, 400, 500, 600, 700, 800, 900]),
        (20, [50 * i for i in range(20)]),  # ... 950
        (50, [20 * i for i in range(50)]),  # ... 980
        (100, [10 * i for i in range(100)]),  # ... 990
        (1000, [i for i in range(1000)]),
        (2, [0, 500]),
        (3, [0, 334, 668]),
        (36, [28 * i for i in range(36)]),  # stride 27 would give 38 steps
        (334, [3 * i for i in range(334)]),  # ... 999
    ],
)
def test_kept_steps_follow_the_smallest_integer_stride(steps, expected):
    assert respaced_timesteps(steps) == expected


def test_valid_counts_are_the_releases():
    assert valid_step_counts() == RELEASE_VALID_COUNTS
    for steps in RELEASE_VALID_COUNTS:
        assert len(respaced_timesteps(steps)) == steps


@pytest.mark.parametrize("steps, nearest", [(37, "36 or 38"), (41, "40 or 42"), (999, "500 or 1000"), (1, "2")])
def test_other_counts_are_rejected_with_the_nearest_valid_ones(steps, nearest):
    with pytest.raises(ValueError, match=f"use {nearest} instead"):
        respaced_timesteps(steps)


def test_non_integer_counts_are_a_type_error():
    with pytest.raises(TypeError):
        respaced_timesteps(20.0)


def test_respaced_alpha_bar_equals_the_schedule_at_the_kept_steps():
    alpha_bar = alpha_bar_schedule()
    for steps in (5, 20, 1000):
        kept = respaced_timesteps(steps)
        respaced = respaced_alpha_bar(alpha_bar, kept)
        assert respaced.dtype == np.float64
        np.testing.assert_allclose(respaced, alpha_bar.numpy()[kept], rtol=1e-13, atol=0)


def test_the_schedule_must_be_float64():
    with pytest.raises(ValueError, match="float64"):
        respaced_alpha_bar(alpha_bar_schedule().float(), [0, 500])
    with pytest.raises(ValueError, match="ascending"):
        respaced_alpha_bar(alpha_bar_schedule(), [500, 0])
