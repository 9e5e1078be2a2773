"""Face parser of the released DVA model: zllrunning's face-parsing BiSeNet (dva-reference.md 3.5).

BiSeNet with a ResNet18 context path, whose spatial path is replaced by the ResNet's 1/8 features, and
19 output classes (``constants.PARSING_CLASSES``). State-dict layout as in 79999_iter.pth:
``cp.resnet.*``, ``cp.arm16/arm32/conv_head32/conv_head16/conv_avg.*``, ``ffm.*``, ``conv_out.*`` and
the auxiliary training heads ``conv_out16.*`` / ``conv_out32.*`` (kept for the keys, unused here).
Nothing is ever downloaded: weights come only through ``load_state_dict``.
"""

from typing import Final, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .arcface import FrozenBatchNorm2d, check_image_batch
from dva_model.constants import PARSING_CLASSES
from .landmark_net import IMAGENET_MEAN, IMAGENET_STD

PARSING_INPUT_SIZE: Final = 512  # the parser runs at 512 x 512
NUM_PARSING_CLASSES: Final = len(PARSING_CLASSES)  # 19
RESNET18_STAGES: Final = ((64, 1), (128, 2), (256, 2), (512, 2))  # (channels, first stride), 2 blocks each
CONTEXT_CHANNELS: Final = 128
FUSION_CHANNELS: Final = 256
AUX_HEAD_CHANNELS: Final = 64
FUSION_REDUCTION: Final = 4


class BasicBlock(nn.Module):
    """ResNet basic block: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = FrozenBatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = FrozenBatchNorm2d(out_channels)
        self.downsample = None
        if in_channels != out_channels or stride != 1:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                FrozenBatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


class ResNet18(nn.Module):
    """ResNet18 trunk without head: x [B,3,H,W] -> features at 1/8, 1/16, 1/32 (128, 256, 512 channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = FrozenBatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_channels = 64
        for i, (channels, stride) in enumerate(RESNET18_STAGES, start=1):
            layer = nn.Sequential(BasicBlock(in_channels, channels, stride), BasicBlock(channels, channels, 1))
            self.add_module(f"layer{i}", layer)
            in_channels = channels

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        feat32 = self.layer4(feat16)
        return feat8, feat16, feat32


class ConvBNReLU(nn.Module):
    """Conv (no bias) -> BatchNorm -> ReLU (keys ``conv.*``, ``bn.*``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, 1, (kernel - 1) // 2, bias=False)
        self.bn = FrozenBatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _global_avg(x: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, C, 1, 1] mean (an avg-pool over the whole map, as the release computes it)."""
    return F.avg_pool2d(x, x.shape[2:])


class AttentionRefinement(nn.Module):
    """ARM: feat = ConvBNReLU(x); feat * sigmoid(bn_atten(conv_atten(global_avg(feat))))."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_channels, out_channels, 3)
        self.conv_atten = nn.Conv2d(out_channels, out_channels, 1, bias=False)
        self.bn_atten = FrozenBatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        feat = self.conv(x)
        return feat * torch.sigmoid(self.bn_atten(self.conv_atten(_global_avg(feat))))


class ContextPath(nn.Module):
    """ResNet18 + attention refinement; returns (1/8 ResNet features, 1/8 context features)."""

    def __init__(self) -> None:
        super().__init__()
        self.resnet = ResNet18()
        self.arm16 = AttentionRefinement(256, CONTEXT_CHANNELS)
        self.arm32 = AttentionRefinement(512, CONTEXT_CHANNELS)
        self.conv_head32 = ConvBNReLU(CONTEXT_CHANNELS, CONTEXT_CHANNELS, 3)
        self.conv_head16 = ConvBNReLU(CONTEXT_CHANNELS, CONTEXT_CHANNELS, 3)
        self.conv_avg = ConvBNReLU(512, CONTEXT_CHANNELS, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        context = self.conv_avg(_global_avg(feat32))  # [B, 128, 1, 1], broadcast over the 1/32 map
        up32 = F.interpolate(self.arm32(feat32) + context, feat16.shape[2:], mode="nearest")
        up32 = self.conv_head32(up32)
        up16 = F.interpolate(self.arm16(feat16) + up32, feat8.shape[2:], mode="nearest")
        return feat8, self.conv_head16(up16)


class FeatureFusion(nn.Module):
    """FFM: feat = ConvBNReLU(cat(a, b)); feat + feat * sigmoid(conv2(relu(conv1(global_avg(feat)))))."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.convblk = ConvBNReLU(in_channels, out_channels, 1)
        self.conv1 = nn.Conv2d(out_channels, out_channels // FUSION_REDUCTION, 1, bias=False)
        self.conv2 = nn.Conv2d(out_channels // FUSION_REDUCTION, out_channels, 1, bias=False)

    def forward(self, spatial: Tensor, context: Tensor) -> Tensor:
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        gate = torch.sigmoid(self.conv2(F.relu(self.conv1(_global_avg(feat)))))
        return feat * gate + feat


class BiSeNetOutput(nn.Module):
    """Segmentation head: ConvBNReLU 3x3 then a 1x1 conv to the class logits."""

    def __init__(self, in_channels: int, mid_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_channels, mid_channels, 3)
        self.conv_out = nn.Conv2d(mid_channels, num_classes, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """Face-parsing BiSeNet: x [B, 3, H, W] ImageNet-normalised -> main logits [B, 19, H, W]."""

    def __init__(self, num_classes: int = NUM_PARSING_CLASSES) -> None:
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusion(FUSION_CHANNELS, FUSION_CHANNELS)
        self.conv_out = BiSeNetOutput(FUSION_CHANNELS, FUSION_CHANNELS, num_classes)
        # Auxiliary heads used only when BiSeNet was trained; kept so the released weights load.
        self.conv_out16 = BiSeNetOutput(CONTEXT_CHANNELS, AUX_HEAD_CHANNELS, num_classes)
        self.conv_out32 = BiSeNetOutput(CONTEXT_CHANNELS, AUX_HEAD_CHANNELS, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        feat8, context8 = self.cp(x)
        logits = self.conv_out(self.ffm(feat8, context8))  # [B, 19, H/8, W/8]
        return F.interpolate(logits, x.shape[2:], mode="bilinear", align_corners=True)


class FaceParser(nn.Module):
    """Per-pixel face-parsing labels with the release's preprocessing (keys ``backbone.*``)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = BiSeNet()
        self.backbone.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Parse faces: x [B, 3, H, W] float in [-1, 1] -> labels [B, H, W] int64 in 0..18.

        As released: nearest-resize to 512, clamp to [-1, 1], map to [0, 1], ImageNet mean/std, argmax
        of the main BiSeNet output, then nearest-resize the labels back to H x W.
        """
        check_image_batch(x, "FaceParser")
        size = tuple(x.shape[-2:])
        x = F.interpolate(x, (PARSING_INPUT_SIZE, PARSING_INPUT_SIZE), mode="nearest")
        x = (x.clamp(-1, 1) + 1) / 2
        x = (x - self.mean) / self.std
        labels = self.backbone(x).argmax(dim=1)  # [B, 512, 512]
        if size != labels.shape[-2:]:
            # Class indices are exact in float32; nearest resampling only selects pixels.
            labels = F.interpolate(labels[:, None].float(), size, mode="nearest")[:, 0].long()
        return labels


def foreground_mask(labels: Tensor, excluded: Sequence[int]) -> Tensor:
    """Binary mask of the pixels whose class is NOT in ``excluded``.

    labels: [B, H, W] integer class indices (``FaceParser`` output); excluded: class indices, e.g.
    ``constants.TRAINING_MASK_EXCLUDED`` or ``constants.PASTE_MASK_EXCLUDED``.
    Returns [B, 1, H, W] float32 in {0, 1} (1 = foreground), on the labels' device.
    """
    if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.is_complex() or labels.ndim != 3:
        raise TypeError(f"foreground_mask expects integer labels [B, H, W], got "
                        f"{getattr(labels, 'dtype', type(labels).__name__)} {tuple(getattr(labels, 'shape', ()))}; "
                        "pass FaceParser's output.")
    bad = [c for c in excluded if not 0 <= int(c) < NUM_PARSING_CLASSES]
    if bad:
        raise ValueError(f"foreground_mask got class indices {bad}; valid classes are 0..{NUM_PARSING_CLASSES - 1} "
                         "(see constants.PARSING_CLASSES).")
    excluded_t = torch.tensor([int(c) for c in excluded], dtype=labels.dtype, device=labels.device)
    return (~torch.isin(labels, excluded_t))[:, None].float()
