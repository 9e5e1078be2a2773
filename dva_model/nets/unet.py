"""The DVA noise predictor: a BeatGANs/DiffAE-style UNet whose ResBlocks take two conditions.

epsilon = UNet(x_t, t, z_face) (Kim et al., CVPR 2023, section 3): the time embedding of the ORIGINAL
timestep index t (0..999, even when sampling with fewer steps) and the face condition z_face both scale
and shift every ResBlock's features, one after the other. Module and parameter names follow the
released checkpoint (official-keys.tsv, every key not under ``encoder.``), so its state dict loads
with ``load_state_dict(strict=True)``.

Precision: every GroupNorm and the attention softmax run in float32 whatever the weights' dtype, so the
model may be cast with ``.to(torch.float16 / torch.bfloat16)`` as a whole (the release runs its UNet
under fp16 autocast with float32 GroupNorm and softmax).
"""

import math
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dva_model.constants import CROP_SIZE, FACE_COND_DIM

MAX_NORM_GROUPS = 32  # GroupNorm uses min(32, C) groups everywhere
TIMESTEP_MAX_PERIOD = 10000  # lowest frequency of the sinusoidal timestep embedding
IMAGE_CHANNELS = 3


@dataclass(frozen=True, kw_only=True)
class UNetConfig:
    """Architecture of a DVA UNet. The defaults are the released model (190.6 M parameters).

    image_size: side of the square training crops; together with ``attention_resolutions`` it places the
        attention blocks (the network itself runs at any size divisible by 2 ** (levels - 1)).
    model_channels: base width, also the width of the sinusoidal timestep embedding.
    channel_mult: width multiplier per resolution level (one level per entry, halving the size each time).
    num_res_blocks: ResBlocks per level going down (going up there is one more).
    attention_resolutions: feature-map sizes that get a self-attention block after each ResBlock.
    num_heads: attention heads (the release uses 1).
    dropout: dropout probability inside each ResBlock (active in training mode only).
    embed_channels: width of the time embedding fed to every ResBlock.
    cond_channels: width of z_face fed to every ResBlock.
    """

    image_size: int = CROP_SIZE
    in_channels: int = IMAGE_CHANNELS
    out_channels: int = IMAGE_CHANNELS
    model_channels: int = 128
    channel_mult: Tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: Tuple[int, ...] = (16,)
    num_heads: int = 1
    dropout: float = 0.1
    embed_channels: int = 512
    cond_channels: int = FACE_COND_DIM

    def __post_init__(self):
        if not self.channel_mult or self.num_res_blocks < 1 or self.model_channels < 1:
            raise ValueError(
                f"UNetConfig needs at least one level, one ResBlock per level and a positive width; got "
                f"channel_mult={self.channel_mult}, num_res_blocks={self.num_res_blocks}, "
                f"model_channels={self.model_channels}."
            )
        if self.image_size % 2 ** (len(self.channel_mult) - 1):
            raise ValueError(
                f"image_size {self.image_size} must be divisible by 2 ** {len(self.channel_mult) - 1} "
                f"for {len(self.channel_mult)} levels; pick another size or fewer levels."
            )
        for mult in self.channel_mult:
            if (mult * self.model_channels) % self.num_heads:
                raise ValueError(
                    f"num_heads {self.num_heads} must divide every level's width "
                    f"({mult * self.model_channels} for multiplier {mult})."
                )

    def level_channels(self, level: int) -> int:
        """Feature channels at resolution level ``level`` (0 = full size)."""
        return self.channel_mult[level] * self.model_channels

    def has_attention(self, level: int) -> bool:
        """Whether level ``level`` (feature size image_size / 2 ** level) carries attention blocks."""
        return self.image_size // 2**level in self.attention_resolutions

    @classmethod
    def from_state_dict(
        cls,
        state_dict: Mapping[str, Tensor],
        *,
        image_size: int = CROP_SIZE,
        num_heads: int = 1,
        dropout: float = 0.1,
    ) -> "UNetConfig":
        """Infer the architecture of an (unprefixed) DVA UNet state dict from its tensor shapes.

        Widths, multipliers, blocks per level and which levels carry attention are read off the shapes;
        ``image_size``, ``num_heads`` and ``dropout`` leave no trace in the shapes and are given. Raises
        ValueError when the keys or shapes are not those of a DVA UNet.
        """
        return _infer_config(state_dict, image_size=image_size, num_heads=num_heads, dropout=dropout)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 (input, weight and bias upcast), result cast back to the input dtype."""

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def normalization(channels: int) -> GroupNorm32:
    return GroupNorm32(min(MAX_NORM_GROUPS, channels), channels)


def _zero_init(module: nn.Module) -> nn.Module:
    """Zero a residual branch's last layer, as the release initialises it (training starts at identity).

    The flag lets ``dva_model.testing.randomize_`` find these layers and keep them small.
    """
    for p in module.parameters():
        nn.init.zeros_(p)
    module.zero_initialised = True
    return module


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding [B, dim] float32 of timesteps t [B], laid out [cos | sin], max period 10000.

    Frequencies exp(-ln(10000) * i / (dim // 2)), i = 0..dim//2 - 1, computed in float32 as released.
    """
    half = dim // 2
    exponents = torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(-math.log(TIMESTEP_MAX_PERIOD) * exponents / half)  # [half]
    args = t[:, None].float() * freqs[None]  # [B, half]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # [B, 2 * half]
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


class TimeEmbedding(nn.Module):
    """MLP on the sinusoidal timestep embedding: Linear, SiLU, Linear (keys time_embed.time_embed.0/.2)."""

    def __init__(self, *, time_channels: int, embed_channels: int):
        super().__init__()
        self.time_embed = nn.Sequential(
            nn.Linear(time_channels, embed_channels),
            nn.SiLU(),
            nn.Linear(embed_channels, embed_channels),
        )

    def forward(self, t_emb: Tensor) -> Tensor:
        return self.time_embed(t_emb)


class ResBlock(nn.Module):
    """Residual block conditioned on the time embedding and on z_face, optionally resampling by 2.

    h = in_layers(x)                  GN, SiLU, [avg-pool / nearest x2], Conv3x3 (x resampled alike)
    h = GN0(h) * (1 + s_t) + b_t      (s_t, b_t) = emb_layers(time embedding)
    h = GN3(Conv2(SiLU(h)))
    h = h * (1 + s_f) + b_f           (s_f, b_f) = cond_emb_layers(z_face)
    h = Conv6(Dropout(SiLU(h)))
    return skip(x) + h                skip = identity, or Conv1x1 when the width changes
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        embed_channels: int,
        cond_channels: int,
        dropout: float,
        resample: Optional[str] = None,
    ):
        super().__init__()
        assert resample in (None, "up", "down")
        self.resample = resample
        self.in_layers = nn.Sequential(
            normalization(in_channels),
            nn.SiLU(),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(embed_channels, 2 * out_channels))
        self.cond_emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(cond_channels, 2 * out_channels))
        self.out_layers = nn.Sequential(
            normalization(out_channels),  # 0: modulated by the time embedding
            nn.SiLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),  # 2
            normalization(out_channels),  # 3: modulated by z_face
            nn.SiLU(),
            nn.Dropout(p=dropout),
            _zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1)),  # 6
        )
        if in_channels == out_channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(in_channels, out_channels, 1)

    def _resample(self, x: Tensor) -> Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return x

    def forward(self, x: Tensor, emb: Tensor, cond: Tensor) -> Tensor:
        norm_in, act_in, conv_in = self.in_layers
        h = conv_in(self._resample(act_in(norm_in(x))))
        x = self._resample(x)
        time_scale, time_shift = self.emb_layers(emb).to(h.dtype)[..., None, None].chunk(2, dim=1)
        face_scale, face_shift = self.cond_emb_layers(cond).to(h.dtype)[..., None, None].chunk(2, dim=1)
        norm0, act1, conv2, norm3, act4, drop5, conv6 = self.out_layers
        h = norm0(h) * (1 + time_scale) + time_shift
        h = norm3(conv2(act1(h)))
        h = h * (1 + face_scale) + face_shift
        h = conv6(drop5(act4(h)))
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over all positions: GN, qkv Conv1d, softmax(q k^T / sqrt(C_head)) v, proj_out, residual.

    q and k are each scaled by C_head ** -1/4 before the product (as released, for fp16 range); the
    softmax runs in float32. Heads split the qkv channels as [head][q|k|v][C_head] (the release's
    "legacy" order; with one head this is plain [q|k|v]).
    """

    def __init__(self, *, channels: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zero_init(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)  # [B, C, L]
        qkv = self.qkv(self.norm(x))  # [B, 3C, L]
        head_channels = c // self.num_heads
        q, k, v = qkv.reshape(b * self.num_heads, 3 * head_channels, -1).split(head_channels, dim=1)
        scale = 1 / math.sqrt(math.sqrt(head_channels))
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)  # [B*heads, L, L]
        weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
        h = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, -1)  # [B, C, L]
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class Stage(nn.Sequential):
    """One entry of input_blocks / middle_block / output_blocks: a stem conv, or ResBlock [+ attention] [+ resampler]."""

    def forward(self, h: Tensor, emb: Tensor, cond: Tensor) -> Tensor:
        for layer in self:
            h = layer(h, emb, cond) if isinstance(layer, ResBlock) else layer(h)
        return h


class DVAUNet(nn.Module):
    """The DVA noise predictor eps(x_t, t, z_face); state-dict keys as the release's non-encoder keys."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        c = config
        self.time_embed = TimeEmbedding(time_channels=c.model_channels, embed_channels=c.embed_channels)

        def res_block(in_ch: int, out_ch: int, resample: Optional[str] = None) -> ResBlock:
            return ResBlock(
                in_channels=in_ch,
                out_channels=out_ch,
                embed_channels=c.embed_channels,
                cond_channels=c.cond_channels,
                dropout=c.dropout,
                resample=resample,
            )

        def attention(ch: int) -> AttentionBlock:
            return AttentionBlock(channels=ch, num_heads=c.num_heads)

        last_level = len(c.channel_mult) - 1
        ch = c.level_channels(0)
        self.input_blocks = nn.ModuleList([Stage(nn.Conv2d(c.in_channels, ch, 3, padding=1))])
        skip_channels = [ch]  # width of every input block's output, consumed in reverse going up
        for level in range(last_level + 1):
            for _ in range(c.num_res_blocks):
                layers = [res_block(ch, c.level_channels(level))]
                ch = c.level_channels(level)
                if c.has_attention(level):
                    layers.append(attention(ch))
                self.input_blocks.append(Stage(*layers))
                skip_channels.append(ch)
            if level != last_level:
                self.input_blocks.append(Stage(res_block(ch, ch, "down")))
                skip_channels.append(ch)

        self.middle_block = Stage(res_block(ch, ch), attention(ch), res_block(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level in reversed(range(last_level + 1)):
            for i in range(c.num_res_blocks + 1):
                layers = [res_block(ch + skip_channels.pop(), c.level_channels(level))]
                ch = c.level_channels(level)
                if c.has_attention(level):
                    layers.append(attention(ch))
                if level != 0 and i == c.num_res_blocks:
                    layers.append(res_block(ch, ch, "up"))
                self.output_blocks.append(Stage(*layers))
        assert not skip_channels

        self.out = nn.Sequential(
            normalization(ch),
            nn.SiLU(),
            _zero_init(nn.Conv2d(ch, c.out_channels, 3, padding=1)),
        )

    def forward(self, x_t: Tensor, t: Tensor, z_face: Tensor) -> Tensor:
        """Predict the noise in x_t.

        x_t: [B, in_channels, H, W] float (H, W divisible by 2 ** (levels - 1)).
        t: [B] int64, the ORIGINAL timestep index 0..999 of each item (also when steps are respaced).
        z_face: [B, cond_channels] float.
        Inputs are cast to the weights' dtype; returns eps [B, out_channels, H, W] in the weights' dtype.
        """
        self._check_inputs(x_t, t, z_face)
        dtype = self.input_blocks[0][0].weight.dtype
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(dtype))  # [B, E]
        cond = z_face.to(dtype)  # z_face enters every ResBlock as is
        h = x_t.to(dtype)
        skips: List[Tensor] = []
        for stage in self.input_blocks:
            h = stage(h, emb, cond)
            skips.append(h)
        h = self.middle_block(h, emb, cond)
        for stage in self.output_blocks:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb, cond)
        return self.out(h)

    def _check_inputs(self, x_t: Tensor, t: Tensor, z_face: Tensor) -> None:
        c = self.config
        factor = 2 ** (len(c.channel_mult) - 1)
        if x_t.ndim != 4 or x_t.shape[1] != c.in_channels or x_t.shape[2] % factor or x_t.shape[3] % factor:
            raise ValueError(
                f"x_t must be [B, {c.in_channels}, H, W] with H and W divisible by {factor}, "
                f"got {tuple(x_t.shape)}."
            )
        if t.shape != (x_t.shape[0],) or t.is_floating_point():
            raise ValueError(
                f"t must be an integer tensor [B] = [{x_t.shape[0]}] of timestep indices, got "
                f"{t.dtype} {tuple(t.shape)}."
            )
        if z_face.shape != (x_t.shape[0], c.cond_channels):
            raise ValueError(
                f"z_face must be [B, {c.cond_channels}] = [{x_t.shape[0]}, {c.cond_channels}], "
                f"got {tuple(z_face.shape)}."
            )


def _shape(state_dict: Mapping[str, Tensor], key: str) -> Tuple[int, ...]:
    if key not in state_dict:
        raise ValueError(f"Not a DVA UNet state dict: key {key!r} is missing (were the keys prefixed?).")
    return tuple(state_dict[key].shape)


def _infer_config(
    state_dict: Mapping[str, Tensor], *, image_size: int, num_heads: int, dropout: float
) -> UNetConfig:
    embed_channels, model_channels = _shape(state_dict, "time_embed.time_embed.0.weight")
    num_levels, blocks_per_level = _count_levels(state_dict)
    channel_mult, attention_resolutions = [], []
    for level in range(num_levels):
        first_block = (num_levels - 1 - level) * blocks_per_level
        width = _shape(state_dict, f"output_blocks.{first_block}.0.in_layers.2.weight")[0]
        if width % model_channels:
            raise ValueError(
                f"Level {level} is {width} channels wide, not a multiple of the base width {model_channels}."
            )
        channel_mult.append(width // model_channels)
        if f"output_blocks.{first_block}.1.qkv.weight" in state_dict:
            attention_resolutions.append(image_size // 2**level)

    config = UNetConfig(
        image_size=image_size,
        in_channels=_shape(state_dict, "input_blocks.0.0.weight")[1],
        out_channels=_shape(state_dict, "out.2.weight")[0],
        model_channels=model_channels,
        channel_mult=tuple(channel_mult),
        num_res_blocks=blocks_per_level - 1,
        attention_resolutions=tuple(sorted(attention_resolutions, reverse=True)),
        num_heads=num_heads,
        dropout=dropout,
        embed_channels=embed_channels,
        cond_channels=_shape(state_dict, "input_blocks.1.0.cond_emb_layers.1.weight")[1],
    )
    _check_shapes(config, state_dict)
    return config


def _count_levels(state_dict: Mapping[str, Tensor]) -> Tuple[int, int]:
    """(resolution levels, decoder blocks per level) of a DVA UNet state dict.

    Output block k holds a ResBlock, [attention], [up-ResBlock]. Every level but the full-size one ends
    with an up-ResBlock, so those count the levels, and the blocks split evenly between them.
    """
    layers_of: Dict[int, set] = {}
    for key in state_dict:
        match = re.match(r"output_blocks\.(\d+)\.(\d+)\.", key)
        if match:
            layers_of.setdefault(int(match[1]), set()).add(int(match[2]))
    num_blocks = len(layers_of)
    if num_blocks == 0 or sorted(layers_of) != list(range(num_blocks)):
        raise ValueError("Not a DVA UNet state dict: output_blocks.* are missing or not numbered 0..N-1.")

    def ends_with_upsampler(k: int) -> bool:
        last = max(layers_of[k])
        return last > 0 and f"output_blocks.{k}.{last}.qkv.weight" not in state_dict

    num_levels = 1 + sum(ends_with_upsampler(k) for k in layers_of)
    if num_blocks % num_levels:
        raise ValueError(
            f"Not a DVA UNet state dict: {num_blocks} output blocks do not split into {num_levels} levels."
        )
    return num_levels, num_blocks // num_levels


def _check_shapes(config: UNetConfig, state_dict: Mapping[str, Tensor]) -> None:
    """Raise ValueError unless ``state_dict`` has exactly the keys and shapes of DVAUNet(config)."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in DVAUNet(config).state_dict().items()}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [k for k in expected if k in state_dict and tuple(state_dict[k].shape) != expected[k]]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"The state dict does not match the UNet inferred from it ({config}): "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:3]}), {len(mismatched)} with other shapes (e.g. {mismatched[:3]})."
        )
