"""ArcFace IR-SE50 identity encoder of the released DVA model (dva-reference.md section 3.2).

The backbone is the IR-SE50 network that pSp/e4e/STIT use for identity losses ("Backbone(112, 50,
'ir_se')", originally TreB1eN/InsightFace_Pytorch), with its state-dict layout: ``input_layer.*``,
``body.<n>.shortcut_layer.*`` / ``body.<n>.res_layer.*`` (squeeze-excitation in ``res_layer.5.fc1/fc2``)
and ``output_layer.{0,3,4}.*``. ``IdentityEncoder`` adds the release's input preprocessing.

The encoders of DVA are frozen: their BatchNorm layers always use running statistics and the
training-time dropout of the output head is left out, so the result never depends on train/eval mode.
"""

from typing import Final

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dva_model.constants import CROP_SIZE, ID_DIM

ARCFACE_INPUT_SIZE: Final = 112  # the backbone's input resolution
# Window of the 256 crop the release hands to ArcFace (rows, then columns), 188 x 188 pixels.
ARCFACE_CROP_ROWS: Final = (35, 223)
ARCFACE_CROP_COLS: Final = (32, 220)

STEM_CHANNELS: Final = 64
# IR-SE50 stages as (output channels, units); the first unit of every stage has stride 2.
IR_SE50_STAGES: Final = ((64, 3), (128, 4), (256, 14), (512, 3))
SE_REDUCTION: Final = 16
# 112 / 2**4 after the four strided stages.
ARCFACE_FEATURE_SIZE: Final = ARCFACE_INPUT_SIZE // 2 ** len(IR_SE50_STAGES)


class _RunningStatsNorm:
    """Mixin: normalise with the running statistics in every mode (a frozen BatchNorm)."""

    def forward(self, x: Tensor) -> Tensor:
        # The same call nn.BatchNorm*d makes in eval mode, so results are bit-identical to it.
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )


class FrozenBatchNorm2d(_RunningStatsNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same parameters, buffers and keys) that always uses its running statistics."""


class FrozenBatchNorm1d(_RunningStatsNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` (same parameters, buffers and keys) that always uses its running statistics."""


def check_image_batch(x: Tensor, what: str) -> None:
    """Raise TypeError/ValueError unless ``x`` is a float ``[B, 3, H, W]`` image batch."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"{what} expects a float tensor [B, 3, H, W] in [-1, 1], got {type(x).__name__} "
                        f"{getattr(x, 'dtype', '')}; convert the images to float first.")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{what} expects images of shape [B, 3, H, W], got {tuple(x.shape)}; "
                         "pass RGB crops in channels-first layout.")


class SqueezeExcite(nn.Module):
    """Channel gate x * sigmoid(fc2(relu(fc1(avgpool(x))))) with 1x1 convolutions, no biases."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(self.avg_pool(x)))))  # [B, C, 1, 1]
        return x * gate


class IRSEUnit(nn.Module):
    """Pre-activation residual unit with squeeze-excitation ("bottleneck_IR_SE")."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if in_channels == out_channels:
            # A 1x1 max-pool is plain subsampling: the identity shortcut of a strided unit.
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                FrozenBatchNorm2d(out_channels),
            )
        self.res_layer = nn.Sequential(
            FrozenBatchNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False),
            nn.PReLU(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, stride, 1, bias=False),
            FrozenBatchNorm2d(out_channels),
            SqueezeExcite(out_channels, SE_REDUCTION),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRSE50(nn.Module):
    """IR-SE50 ArcFace backbone: ``forward(x [B, 3, 112, 112]) -> [B, 512]`` unit-length embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, STEM_CHANNELS, 3, 1, 1, bias=False),
            FrozenBatchNorm2d(STEM_CHANNELS),
            nn.PReLU(STEM_CHANNELS),
        )
        units = []
        in_channels = STEM_CHANNELS
        for out_channels, num_units in IR_SE50_STAGES:
            for i in range(num_units):
                units.append(IRSEUnit(in_channels, out_channels, stride=2 if i == 0 else 1))
                in_channels = out_channels
        self.body = nn.Sequential(*units)
        self.output_layer = nn.Sequential(
            FrozenBatchNorm2d(in_channels),
            nn.Identity(),  # Dropout(0.6) when ArcFace itself was trained; the index keeps the key layout.
            nn.Flatten(),
            nn.Linear(in_channels * ARCFACE_FEATURE_SIZE ** 2, ID_DIM),
            FrozenBatchNorm1d(ID_DIM),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Embed aligned faces: x [B, 3, 112, 112] float (the release feeds [-1, 1]) -> [B, 512] unit."""
        z = self.output_layer(self.body(self.input_layer(x)))  # [B, 512]
        # Plain division by the norm (no epsilon), as the released backbone does.
        return z / torch.norm(z, 2, 1, keepdim=True)


class IdentityEncoder(nn.Module):
    """z_id of the paper: the release's ArcFace preprocessing followed by the frozen IR-SE50 backbone.

    State-dict keys: ``backbone.*`` (the raw IR-SE50 keys under ``backbone.``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.backbone = IRSE50()
        self.backbone.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        """Encode identity: x [B, 3, H, W] float in [-1, 1] (aligned crops) -> z_id [B, 512] unit length.

        Inputs other than 256 x 256 are first adaptive-average-pooled to 256; then rows 35:223 and
        columns 32:220 (188 x 188) are cut out and adaptive-average-pooled to 112. No mean/std
        normalisation (as released).
        """
        check_image_batch(x, "IdentityEncoder")
        if tuple(x.shape[-2:]) != (CROP_SIZE, CROP_SIZE):
            x = F.adaptive_avg_pool2d(x, (CROP_SIZE, CROP_SIZE))
        x = x[:, :, ARCFACE_CROP_ROWS[0]:ARCFACE_CROP_ROWS[1], ARCFACE_CROP_COLS[0]:ARCFACE_CROP_COLS[1]]
        x = F.adaptive_avg_pool2d(x, (ARCFACE_INPUT_SIZE, ARCFACE_INPUT_SIZE))  # [B, 3, 112, 112]
        return self.backbone(x)
