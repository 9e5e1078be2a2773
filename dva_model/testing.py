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


# Stand-in weights for the third-party face detectors, in each package's own file format and folder. No
# real weights exist here; these make the packages' own loaders and pre/post-processing run for real.
# The crafted detectors "see" pure red patches (and nothing else), so a test can tell where a detection
# must land, and that the frame reached the network in the colour order the package expects.
STANDIN_RED_GAIN = 20.0  # logit per unit of normalised red response
FAN_WEIGHTS_FILE = "2DFAN4-11f355bf06.pth.tar"  # face_alignment.api.models_urls['2DFAN-4'] file name
S3FD_WEIGHTS_FILE = "s3fd-619a316812.pth"  # face_alignment.detection.sfd models_urls['s3fd'] file name
S3FD_RED_INPUT = 2  # S3FD runs on BGR minus the mean: red is channel 2
S3FD_MEAN_RED = 123.0
SCRFD_STRIDES = (8, 16, 32)
SCRFD_ANCHORS = 2  # anchors per location for the 9-output (with key points) SCRFD graphs


def write_face_alignment_standins(torch_home, *, box_side: float = 64.0, seed: int = 0) -> list:
    """Write FAN (2D, 4 hourglasses; random weights) and a crafted S3FD into ``torch_home``/hub/checkpoints
    under the names face-alignment looks for before downloading. Returns the two paths.

    The S3FD stand-in finds red: the red channel goes unchanged through conv1_1..conv3_3 (stride 4), the
    stride-4 head scores "face" where it is positive, and its boxes are ``box_side`` px squares around
    those anchors; every other head says background.
    """
    from pathlib import Path

    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    folder = Path(torch_home) / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    fan_path = folder / FAN_WEIGHTS_FILE
    torch.save(FAN(4).state_dict(), fan_path)

    net = s3fd()
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.zero_()
        net.conv1_1.weight[0, S3FD_RED_INPUT, 1, 1] = 1.0
        net.conv1_1.bias[0] = -S3FD_MEAN_RED  # the mean was already taken off; this keeps pure red only
        for name in ("conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3"):
            getattr(net, name).weight[0, 0, 1, 1] = 1.0
        net.conv3_3_norm.weight.fill_(1.0)  # L2Norm: 1 where the red response is positive, else 0
        net.conv3_3_norm_mbox_conf.weight[3, 0, 1, 1] = STANDIN_RED_GAIN  # channel 3: face (0-2: background)
        net.conv3_3_norm_mbox_conf.bias[3] = -STANDIN_RED_GAIN / 2
        prior_side = 4 * 4  # stride 4 x 4 (face_alignment's prior size)
        net.conv3_3_norm_mbox_loc.bias[2:] = math.log(box_side / prior_side) / 0.2  # variance 0.2
        for head in ("conv4_3_norm", "conv5_3_norm", "fc7", "conv6_2", "conv7_2"):
            getattr(net, f"{head}_mbox_conf").bias.copy_(torch.tensor([STANDIN_RED_GAIN, -STANDIN_RED_GAIN]))
    s3fd_path = folder / S3FD_WEIGHTS_FILE
    torch.save(net.state_dict(), s3fd_path)
    return [fan_path, s3fd_path]


def write_scrfd_standin(path, *, box_side: float = 64.0) -> "Path":
    """Write an ONNX graph with SCRFD's interface (input ``input.1`` [1, 3, H, W], 9 outputs: scores
    [N, 1], boxes [N, 4], key points [N, 10] for strides 8, 16, 32, two anchors a place) that finds red.

    Stride 8 scores each 8 x 8 cell by its mean red (insightface normalises to about [-1, 1] after
    swapping BGR to RGB); boxes are ``box_side`` px squares (in the detector's input pixels) centred on
    the anchors; strides 16 and 32 find nothing.
    """
    from pathlib import Path

    import onnx
    from onnx import TensorProto, helper

    nodes, constants = [], {}

    def const(name, values):
        constants[name] = helper.make_tensor(name, TensorProto.FLOAT, [len(values)] if len(values) > 1 else [],
                                             values)
        return name

    nodes.append(helper.make_node("Slice", ["input.1", "start", "end", "axis"], ["red"]))
    int_constants = [helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in (("start", 0), ("end", 1), ("axis", 1))]
    int_constants.append(helper.make_tensor("flat", TensorProto.INT64, [2], [-1, 1]))
    outputs = {"score": [], "bbox": [], "kps": []}
    for stride in SCRFD_STRIDES:
        s = str(stride)
        nodes.append(helper.make_node("AveragePool", ["red"], [f"pool{s}"], kernel_shape=[stride, stride], strides=[stride, stride]))
        gain, offset = (STANDIN_RED_GAIN, -STANDIN_RED_GAIN / 2) if stride == SCRFD_STRIDES[0] else (0.0, -STANDIN_RED_GAIN)
        nodes.append(helper.make_node("Mul", [f"pool{s}", const(f"gain{s}", [gain])], [f"scaled{s}"]))
        nodes.append(helper.make_node("Add", [f"scaled{s}", const(f"offset{s}", [offset])], [f"logit{s}"]))
        nodes.append(helper.make_node("Sigmoid", [f"logit{s}"], [f"prob{s}"]))
        nodes.append(helper.make_node("Concat", [f"prob{s}"] * SCRFD_ANCHORS, [f"anchors{s}"], axis=1))  # [1, 2, h, w]
        nodes.append(helper.make_node("Transpose", [f"anchors{s}"], [f"hwa{s}"], perm=[0, 2, 3, 1]))
        nodes.append(helper.make_node("Reshape", [f"hwa{s}", "flat"], [f"score_{s}"]))  # [h*w*2, 1]
        nodes.append(helper.make_node("Mul", [f"score_{s}", const(f"zero{s}", [0.0])], [f"zeros{s}"]))
        distance = box_side / 2 / stride  # the package multiplies by the stride
        nodes.append(helper.make_node("Add", [f"zeros{s}", const(f"dist{s}", [distance] * 4)], [f"bbox_{s}"]))
        nodes.append(helper.make_node("Add", [f"zeros{s}", const(f"kps{s}", [0.0] * 10)], [f"kps_{s}"]))
        for kind in outputs:
            outputs[kind].append(f"{kind}_{s}")
    graph = helper.make_graph(
        nodes, "scrfd_standin",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "height", "width"])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, width])
         for kind, width in (("score", 1), ("bbox", 4), ("kps", 10)) for name in outputs[kind]],
        initializer=list(constants.values()) + int_constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
