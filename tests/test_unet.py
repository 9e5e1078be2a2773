"""The DVA UNet: release key layout, config inference, block maths, precision handling.

The full-size network is only built (on the meta device, no memory, never run); numerics are checked
on the tiny random UNet of ``dva_model.testing``. Bit-exact parity with the authors' code for identical
weights is the parity harness's job; here each block is recomputed by hand from the published formulas.
"""

import hashlib
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dva_model.testing import randomize_, single_thread, tiny_unet_config
from dva_model.nets.unet import AttentionBlock, DVAUNet, GroupNorm32, ResBlock, UNetConfig, timestep_embedding

REPO = Path(__file__).resolve().parents[1]
OFFICIAL_KEYS_CANDIDATES = (REPO / "docs" / "official-keys.tsv", Path("/work/shared/docs/official-keys.tsv"))
# Facts of official-keys.tsv (its 758 non-encoder rows), so the layout check runs without the file too:
# the SHA-256 of the lines "key<TAB>shape" in file order, shapes written as Python tuples.
RELEASE_UNET_KEYS = 758
RELEASE_UNET_PARAMETERS = 190_576_643
RELEASE_UNET_LAYOUT_SHA256 = "e2dc9fa8d49bc90a27bf233a414b6738b8d3fbe6af7a361c89142b482e153aef"


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


def _layout(state_dict) -> list:
    return [(key, tuple(value.shape)) for key, value in state_dict.items()]


def _digest(layout) -> str:
    return hashlib.sha256("\n".join(f"{k}\t{s}" for k, s in layout).encode()).hexdigest()


def _meta_unet(config: UNetConfig) -> DVAUNet:
    with torch.device("meta"):
        return DVAUNet(config)


@pytest.fixture(scope="module")
def release_unet() -> DVAUNet:
    return _meta_unet(UNetConfig())


@pytest.fixture(scope="module")
def tiny() -> DVAUNet:
    # Output head at full gain: a single forward's eps is then not dominated by the head's bias.
    return randomize_(DVAUNet(tiny_unet_config()), seed=0, output_head_gain=1.0).eval()


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 32, 32, generator=g), torch.tensor([3, 950]), torch.randn(2, 512, generator=g)


def test_default_config_has_the_release_keys_and_shapes(release_unet):
    layout = _layout(release_unet.state_dict())
    assert len(layout) == RELEASE_UNET_KEYS
    assert sum(p.numel() for p in release_unet.parameters()) == RELEASE_UNET_PARAMETERS
    tsv = next((p for p in OFFICIAL_KEYS_CANDIDATES if p.is_file()), None)
    if tsv is not None:  # the detailed diff, for a readable failure
        rows = [line.split("\t") for line in tsv.read_text().splitlines() if line and not line.startswith("#")]
        expected = [(key, tuple(int(n) for n in shape.strip("()").split(",") if n.strip()))
                    for key, shape, *_ in rows if not key.startswith("encoder.")]
        assert layout == expected
    assert _digest(layout) == RELEASE_UNET_LAYOUT_SHA256


def test_release_config_is_inferred_from_its_state_dict(release_unet):
    assert UNetConfig.from_state_dict(release_unet.state_dict()) == UNetConfig()


@pytest.mark.parametrize(
    "config",
    [
        tiny_unet_config(),
        UNetConfig(image_size=64, model_channels=32, channel_mult=(1, 2, 3), num_res_blocks=2,
                   attention_resolutions=(32, 16), embed_channels=96, cond_channels=40, in_channels=4,
                   out_channels=6),
    ],
)
def test_other_architectures_are_inferred_from_their_state_dicts(config):
    assert UNetConfig.from_state_dict(_meta_unet(config).state_dict(), image_size=config.image_size) == config


def test_inferred_config_loads_strictly_and_computes_the_same(tiny, inputs):
    state = tiny.state_dict()
    copy = DVAUNet(UNetConfig.from_state_dict(state, image_size=32)).eval()
    copy.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert torch.equal(copy(*inputs), tiny(*inputs))


def test_foreign_state_dicts_are_rejected_with_a_reason(tiny):
    state = tiny.state_dict()
    with pytest.raises(ValueError, match="prefixed"):
        UNetConfig.from_state_dict({f"model.{k}": v for k, v in state.items()})
    broken = dict(state)
    broken["middle_block.1.qkv.weight"] = torch.zeros(5, 5, 1)
    with pytest.raises(ValueError, match="other shapes"):
        UNetConfig.from_state_dict(broken, image_size=32)
    broken = {k: v for k, v in state.items() if not k.startswith("middle_block.2.")}
    with pytest.raises(ValueError, match="missing"):
        UNetConfig.from_state_dict(broken, image_size=32)


def test_forward_shapes_and_sizes(tiny, inputs):
    x, t, z = inputs
    with torch.no_grad():
        eps = tiny(x, t, z)
        assert eps.shape == (2, 3, 32, 32) and eps.dtype == torch.float32 and torch.isfinite(eps).all()
        assert tiny(torch.randn(1, 3, 48, 64), t[:1], z[:1]).shape == (1, 3, 48, 64)  # any multiple of 8
    with pytest.raises(ValueError, match="divisible by 8"):
        tiny(torch.randn(1, 3, 36, 32), t[:1], z[:1])
    with pytest.raises(ValueError, match="integer tensor"):
        tiny(x, t.float(), z)
    with pytest.raises(ValueError, match="z_face"):
        tiny(x, t, z[:, :100])


def test_conditions_matter(tiny, inputs):
    x, t, z = inputs
    with torch.no_grad():
        eps = tiny(x, t, z)
        assert (tiny(x, t.flip(0), z) - eps).abs().max() > 1e-3
        assert (tiny(x, t, z.flip(0)) - eps).abs().max() > 1e-3


def test_fresh_model_starts_at_zero_output_like_the_release(inputs):
    """The release zero-initialises each residual branch's last conv, proj_out and the output conv."""
    model = DVAUNet(tiny_unet_config())
    zeroed = [name for name, m in model.named_modules() if getattr(m, "zero_initialised", False)]
    assert "out.2" in zeroed and "middle_block.1.proj_out" in zeroed and "middle_block.0.out_layers.6" in zeroed
    with torch.no_grad():
        assert torch.equal(model(*inputs), torch.zeros(2, 3, 32, 32))


def test_timestep_embedding_is_cos_then_sin_with_max_period_10000():
    emb = timestep_embedding(torch.tensor([0, 1, 999]), 128)
    assert emb.shape == (3, 128) and emb.dtype == torch.float32
    assert torch.equal(emb[0], torch.cat([torch.ones(64), torch.zeros(64)]))
    lowest = 10000 ** (-63 / 64)
    expected = torch.tensor([math.cos(999.0), math.cos(999 * lowest), math.sin(999.0), math.sin(999 * lowest)])
    assert torch.allclose(emb[2, [0, 63, 64, 127]], expected, atol=1e-4)
    assert torch.allclose(emb[1, [0, 64]], torch.tensor([math.cos(1.0), math.sin(1.0)]), atol=1e-6)


def test_resblock_follows_the_published_formula():
    block = randomize_(ResBlock(in_channels=32, out_channels=64, embed_channels=16, cond_channels=8,
                                dropout=0.1, resample="down"), seed=2).eval()
    g = torch.Generator().manual_seed(3)
    x, emb, cond = torch.randn(2, 32, 8, 8, generator=g), torch.randn(2, 16, generator=g), torch.randn(2, 8, generator=g)
    ts, tb = block.emb_layers[1](F.silu(emb))[..., None, None].chunk(2, dim=1)
    cs, cb = block.cond_emb_layers[1](F.silu(cond))[..., None, None].chunk(2, dim=1)
    gn = lambda h, m: F.group_norm(h, 32, m.weight, m.bias, m.eps)  # noqa: E731
    conv = lambda h, m: F.conv2d(h, m.weight, m.bias, padding=m.padding)  # noqa: E731
    h = conv(F.avg_pool2d(F.silu(gn(x, block.in_layers[0])), 2), block.in_layers[2])
    h = gn(h, block.out_layers[0]) * (1 + ts) + tb
    h = gn(conv(F.silu(h), block.out_layers[2]), block.out_layers[3])
    h = h * (1 + cs) + cb
    h = conv(F.silu(h), block.out_layers[6])
    expected = conv(F.avg_pool2d(x, 2), block.skip_connection) + h
    with torch.no_grad():
        assert torch.allclose(block(x, emb, cond), expected, atol=1e-5)


def test_attention_is_single_head_scaled_dot_product():
    block = randomize_(AttentionBlock(channels=64, num_heads=1), seed=4)
    x = torch.randn(2, 64, 4, 4, generator=torch.Generator().manual_seed(5))
    qkv = block.qkv(block.norm(x.reshape(2, 64, 16)))  # [B, 3C, L]
    q, k, v = (part.transpose(1, 2) for part in qkv.chunk(3, dim=1))  # [B, L, C] each
    h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)  # scale 1 / sqrt(C)
    expected = x + block.proj_out(h).reshape(2, 64, 4, 4)
    with torch.no_grad():
        assert torch.allclose(block(x), expected, atol=1e-5)


def test_groupnorm_and_softmax_run_in_float32_with_bfloat16_weights(tiny, inputs, monkeypatch):
    assert all(isinstance(m, GroupNorm32) for m in tiny.modules() if isinstance(m, nn.GroupNorm))
    seen = []
    group_norm, softmax = F.group_norm, torch.softmax

    def spy_group_norm(x, groups, weight=None, bias=None, eps=1e-5):
        seen.append(("group_norm", x.dtype, weight.dtype))
        return group_norm(x, groups, weight, bias, eps)

    def spy_softmax(x, dim):
        seen.append(("softmax", x.dtype, x.dtype))
        return softmax(x, dim)

    model = DVAUNet(tiny_unet_config()).eval()
    model.load_state_dict(tiny.state_dict())
    model.to(torch.bfloat16)
    monkeypatch.setattr(F, "group_norm", spy_group_norm)
    monkeypatch.setattr(torch, "softmax", spy_softmax)
    with torch.no_grad():
        eps = model(*inputs)
    monkeypatch.undo()
    assert {kind for kind, *_ in seen} == {"group_norm", "softmax"}
    assert all(dtypes == [torch.float32, torch.float32] for _, *dtypes in seen)
    with torch.no_grad():
        reference = tiny(*inputs)
    assert eps.dtype == torch.bfloat16 and torch.isfinite(eps).all()
    assert (eps.float() - reference).abs().max() < 0.05 * reference.abs().max()
