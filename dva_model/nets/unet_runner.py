"""Faster ways to call the DVA UNet at inference: channels-last memory, torch.compile, CUDA graphs.

``UNetRunner`` wraps a frozen ``DVAUNet`` and is called exactly like it, eps = runner(x_t, t, z_face).
It changes how the computation is laid out and scheduled, never what is computed:

- channels_last: weights and inputs in NHWC memory order (oneDNN / cuDNN convolutions prefer it);
- compile: ``torch.compile`` (inductor) fuses the GroupNorm / SiLU / scale-shift chains around each
  convolution. The first call for each input shape compiles (minutes on a small CPU, logged and kept in
  ``compile_seconds``); inductor caches compiled code on disk, so a later process compiles faster;
- cuda_graphs: on CUDA, compile with ``mode="reduce-overhead"`` so each forward replays one CUDA graph
  (launch overhead gone; the output is copied out because the graph's buffers are reused).

Reduced precision is the weights' dtype (``load_model(dtype=...)``): GroupNorm and the attention softmax
of ``dva_model.nets.unet`` compute in float32 whatever that dtype is, so no autocast is needed here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Dict, Tuple

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class RunnerOptions:
    """How ``UNetRunner`` runs the UNet; all False is the plain eager call."""

    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False  # CUDA only; implies compile (mode "reduce-overhead")

    @property
    def compiles(self) -> bool:
        return self.compile or self.cuda_graphs

    def describe(self) -> str:
        """A short name of the mode, e.g. "compile+channels-last" or "eager"."""
        parts = [name for name, on in (("cuda-graphs" if self.cuda_graphs else "compile", self.compiles),
                                       ("channels-last", self.channels_last)) if on]
        return "+".join(parts) or "eager"


# The modes offered by name (node option, parity harness); "cuda-graphs" implies compiling.
RUNNER_MODES = {
    "eager": RunnerOptions(),
    "channels-last": RunnerOptions(channels_last=True),
    "compile": RunnerOptions(compile=True),
    "compile+channels-last": RunnerOptions(compile=True, channels_last=True),
    "cuda-graphs+channels-last": RunnerOptions(cuda_graphs=True, channels_last=True),
}


class UNetRunner:
    """Calls a frozen UNet with ``RunnerOptions``: runner(x_t, t, z_face) == unet(x_t, t, z_face).

    Converting to channels-last changes ``unet``'s parameters' memory order in place (values unchanged).
    x_t: [B, C, H, W], t: [B] int64, z_face: [B, 512]; returns eps [B, C, H, W] contiguous, in the
    weights' dtype, within float round-off of the eager call (different kernels sum in another order).
    """

    def __init__(self, unet: nn.Module, options: RunnerOptions = RunnerOptions()):
        device = next(unet.parameters()).device
        if options.cuda_graphs and device.type != "cuda":
            raise ValueError(f"CUDA graphs need the model on a CUDA device; it is on {device}. "
                             f"Drop the CUDA graphs option or load the model with device='cuda'.")
        self.unet, self.options = unet, options
        self.compile_seconds: Dict[Tuple[int, ...], float] = {}  # input shape -> first call (compile + run)
        if options.channels_last:
            unet.to(memory_format=torch.channels_last)
        self._forward = unet
        if options.compiles:
            # fullgraph: a graph break would silently fall back to slow eager pieces; dynamic=False: one
            # specialised kernel set per batch size (a clip needs at most two: full and last batch).
            mode = "reduce-overhead" if options.cuda_graphs else None
            self._forward = torch.compile(unet, mode=mode, fullgraph=True, dynamic=False)

    def __call__(self, x_t: Tensor, t: Tensor, z_face: Tensor) -> Tensor:
        if self.options.channels_last:
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        if self.options.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        shape = tuple(x_t.shape)
        if self.options.compiles and shape not in self.compile_seconds:
            start = time.perf_counter()
            eps = self._forward(x_t, t, z_face)
            self.compile_seconds[shape] = time.perf_counter() - start
            log.info("compiled the UNet (%s) for input %s in %.1f s", self.options.describe(), list(shape),
                     self.compile_seconds[shape])
        else:
            eps = self._forward(x_t, t, z_face)
        if self.options.cuda_graphs:
            return eps.clone(memory_format=torch.contiguous_format)  # the graph reuses its output buffer
        return eps.contiguous()
