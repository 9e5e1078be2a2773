"""Landmark encoder of the released DVA model: MobileNetV2 + GDConv regressor (dva-reference.md 3.3).

The network is cunjian/pytorch_face_landmark's "mobilenet_224_model_best_gdconv_external": torchvision's
MobileNetV2 feature extractor (built here without torchvision, same ``features.*`` layout), then a
global depthwise 7x7 convolution (``linear7``) and a 1x1 convolution to 136 = 68 (x, y) numbers
(``linear1``), each followed by BatchNorm.

Our state-dict layout (``MobileNetV2GDConv``): ``features.*``, ``linear7.{conv,bn}.*``,
``linear1.{conv,bn}.*``. The release stores the features twice, as ``pretrain_net.features.*`` and
``base_net.0.*`` (one module under two names), plus an unused ImageNet head
``pretrain_net.classifier.*``; ``dva_model.formats.release_keys`` maps that layout onto ours.
"""

from typing import Final

import torch
from torch import Tensor, nn

from .arcface import FrozenBatchNorm2d, check_image_batch
from dva_model.constants import CROP_SIZE, JAW_POINTS, LANDMARK_DIM, LANDMARK_POINTS

LANDMARK_INPUT_SIZE: Final = 224
# The release centre-crops rows and columns 16:240 of the 256 crop to get the 224 input.
LANDMARK_CROP: Final = ((CROP_SIZE - LANDMARK_INPUT_SIZE) // 2, (CROP_SIZE + LANDMARK_INPUT_SIZE) // 2)
IMAGENET_MEAN: Final = (0.485, 0.456, 0.406)
IMAGENET_STD: Final = (0.229, 0.224, 0.225)

MOBILENET_STEM_CHANNELS: Final = 32
MOBILENET_LAST_CHANNELS: Final = 1280
# torchvision's MobileNetV2 (width 1.0) inverted-residual settings: (expansion t, channels c, repeats n,
# first stride s).
MOBILENET_V2_SETTINGS: Final = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)
GDCONV_KERNEL: Final = LANDMARK_INPUT_SIZE // 32  # 7: the feature map is 7 x 7 at 224 input


def _conv_bn_relu6(in_channels: int, out_channels: int, kernel: int, stride: int = 1,
                   groups: int = 1) -> nn.Sequential:
    """torchvision's Conv2dNormActivation: conv (no bias, same padding), BatchNorm, ReLU6 (keys .0 .1)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        FrozenBatchNorm2d(out_channels),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand] -> 3x3 depthwise -> 1x1 linear projection, residual when shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        layers = [] if expansion == 1 else [_conv_bn_relu6(in_channels, hidden, 1)]
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            FrozenBatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return x + y if self.use_residual else y


class ConvBN(nn.Module):
    """Convolution without bias followed by BatchNorm, no activation (keys ``conv.*``, ``bn.*``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, groups=groups, bias=False)
        self.bn = FrozenBatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


def _mobilenet_v2_features() -> nn.Sequential:
    """torchvision ``mobilenet_v2().features`` (width 1.0): 19 stages, [B,3,224,224] -> [B,1280,7,7]."""
    layers = [_conv_bn_relu6(3, MOBILENET_STEM_CHANNELS, 3, stride=2)]
    in_channels = MOBILENET_STEM_CHANNELS
    for expansion, out_channels, repeats, stride in MOBILENET_V2_SETTINGS:
        for i in range(repeats):
            layers.append(InvertedResidual(in_channels, out_channels, stride if i == 0 else 1, expansion))
            in_channels = out_channels
    layers.append(_conv_bn_relu6(in_channels, MOBILENET_LAST_CHANNELS, 1))
    return nn.Sequential(*layers)


class MobileNetV2GDConv(nn.Module):
    """MobileNetV2 + global depthwise conv regressor: x [B, 3, 224, 224] normalised -> [B, 136] raw (x, y)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = _mobilenet_v2_features()
        self.linear7 = ConvBN(MOBILENET_LAST_CHANNELS, MOBILENET_LAST_CHANNELS, GDCONV_KERNEL,
                              groups=MOBILENET_LAST_CHANNELS)
        self.linear1 = ConvBN(MOBILENET_LAST_CHANNELS, 2 * LANDMARK_POINTS, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.linear1(self.linear7(self.features(x)))  # [B, 136, 1, 1]
        return h.flatten(1)  # [B, 136]: (x0, y0, x1, y1, ...) in crop-relative units


class LandmarkEncoder(nn.Module):
    """z_lnd of the paper: the release's preprocessing, the frozen regressor, jaw points dropped.

    State-dict keys: ``backbone.*`` (``MobileNetV2GDConv`` layout).
    """

    def __init__(self) -> None:
        super().__init__()
        self.backbone = MobileNetV2GDConv()
        self.backbone.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Encode landmarks: x [B, 3, 256|224, 256|224] float in [-1, 1] -> z_lnd [B, 102] in [0, 1].

        256 crops are centre-cropped to rows/cols 16:240; a 224 input is used as is. The input is mapped
        to [0, 1] and ImageNet-normalised; the 136 outputs are clamped to [0, 1], read as 68 (x, y)
        points, the 17 jaw points (0..16) are dropped and the other 51 flattened (x, y interleaved).
        """
        check_image_batch(x, "LandmarkEncoder")
        size = tuple(x.shape[-2:])
        if size == (CROP_SIZE, CROP_SIZE):
            lo, hi = LANDMARK_CROP
            x = x[:, :, lo:hi, lo:hi]  # [B, 3, 224, 224]
        elif size != (LANDMARK_INPUT_SIZE, LANDMARK_INPUT_SIZE):
            raise ValueError(f"LandmarkEncoder expects {CROP_SIZE}x{CROP_SIZE} aligned crops (or "
                             f"{LANDMARK_INPUT_SIZE}x{LANDMARK_INPUT_SIZE} centre crops), got {size[0]}x"
                             f"{size[1]}; resize the aligned crops to {CROP_SIZE} first.")
        x = ((x + 1) / 2 - self.mean) / self.std
        points = self.backbone(x).clamp(0, 1).reshape(-1, LANDMARK_POINTS, 2)  # [B, 68, 2]
        return points[:, JAW_POINTS:].reshape(-1, LANDMARK_DIM)  # [B, 102]
