"""Training a DVA on one process or many (torch.distributed): the step, the loop and its checkpoints.

One ``Trainer`` lives in each process. It trains the UNet and the z_face linear layer with the published
objective (``train_loss``), Adam, gradient-norm clipping and mixed precision, keeps an exponential
moving average (EMA) of those weights, and never touches the frozen ArcFace, landmark net and face
parser. With ``torch.distributed`` initialised (torchrun), gradients are averaged over the processes by
DistributedDataParallel; each process feeds its own frames (``train_data``).

Reproducibility: the initial weights come from the caller; every random draw of a step (timesteps,
noises) comes from a generator seeded by (seed, step, rank), dropout from each process's global RNG,
whose state is saved in the checkpoint. Stopping at step s and resuming therefore continues bit for bit
as an uninterrupted run would (same number of processes, same device kind).

``fit`` is the model-agnostic loop: it runs steps and reports a ``StepReport`` to a callback after
each; logging, checkpoint and preview policy belong to the caller (the ``train`` command).
"""

import collections
import copy
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dva_model.nets.bisenet import foreground_mask
from dva_model.formats.files import write_atomically
from dva_model.formats.safe_pickle import load_pickled
from dva_model.constants import PRECISIONS, TRAINING_MASK_EXCLUDED, Precision
from dva_model.errors import UserError
from dva_model.nets.face_encoder import FaceEncoder
from dva_model.model import DVAModel
from dva_model.diffusion.schedule import alpha_bar_schedule
from dva_model.train.data import derive_seed
from dva_model.train.loss import LossTerms, draw_noise, dva_loss

log = logging.getLogger(__name__)

AUTOCAST_DTYPES = {name: dtype for name, dtype in PRECISIONS.items() if name != "fp32"}  # fp32 runs without autocast
TRAIN_STATE_FORMAT = "dva-train-state/1"
TRAINABLE_PREFIXES = ("unet.", "encoder.linear.")  # everything else (ArcFace, landmark net, parser) is frozen
RATE_WINDOW = 20  # steps averaged for frames/s and the ETA


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation settings; the defaults are the published ones (fp16 there, fp32 here for CPU).

    lr: Adam learning rate (no warm-up, no decay, no weight decay).
    grad_clip: maximum global gradient norm.
    ema_decay: EMA weight of the old average at every step.
    precision: autocast dtype of the UNet forward ("fp16" uses a gradient scaler and needs CUDA).
    seed: seeds the noise, the timesteps and dropout (with the step and the process rank).
    cache_encodings: keep each frame's z_id, z_lnd and mask in memory after its first use; worth it
        when the frozen encoders dominate (few frames, small UNet), costly for large data sets.
    """

    lr: float = 1e-4
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    precision: Precision = "fp32"
    seed: int = 0
    cache_encodings: bool = False

    def __post_init__(self):
        if self.precision not in ("fp32", *AUTOCAST_DTYPES):
            raise ValueError(f"precision must be fp32, fp16 or bf16, got {self.precision!r}.")
        if not 0.0 <= self.ema_decay < 1.0 or self.lr <= 0 or self.grad_clip <= 0:
            raise ValueError(
                f"need lr > 0, grad_clip > 0 and 0 <= ema_decay < 1; got lr={self.lr}, "
                f"grad_clip={self.grad_clip}, ema_decay={self.ema_decay}."
            )


@dataclass(frozen=True)
class StepReport:
    """What ``fit`` tells its callback after each step (losses averaged over all processes)."""

    step: int  # steps done so far, counting those before a resume
    total: int
    loss: float
    simple: float  # L_simple
    reg: float  # L_reg
    frames_per_second: float  # over all processes, averaged over the last few steps
    eta_seconds: float


def is_trainable(name: str) -> bool:
    """Whether the ``DVAModel`` parameter ``name`` is trained (UNet and z_face linear) or frozen."""
    return name.startswith(TRAINABLE_PREFIXES)


def _world() -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def encode_conditions(encoder: FaceEncoder, frames: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """The frozen encoders on training frames [B, 3, S, S] in [-1, 1], in float32.

    Returns (z_id [B, 512] unit, z_lnd [B, 102] in [0, 1], mask [B, 1, S, S] float {0, 1}: the training
    foreground).
    """
    z_id = encoder.encode_identity(frames).float()
    z_lnd = encoder.encode_landmarks(frames).float()
    mask = foreground_mask(encoder.parse(frames), TRAINING_MASK_EXCLUDED)
    return z_id, z_lnd, mask


class _Denoiser(nn.Module):
    """eps = UNet(x_t, t, Linear([z_id ; z_lnd])): the trained part, as one module for DistributedDataParallel."""

    def __init__(self, model: DVAModel):
        super().__init__()
        self.unet, self.encoder = model.unet, model.encoder

    def forward(self, x_t: Tensor, t: Tensor, z_id: Tensor, z_lnd: Tensor) -> Tensor:
        return self.unet(x_t, t, self.encoder.face_condition(z_id, z_lnd))


@torch.no_grad()
def evaluation_loss(model: DVAModel, frames: Tensor, *, timesteps: Sequence[int], seed: int = 0) -> LossTerms:
    """The training objective at fixed timesteps and seeded noises, dropout off: a steady score of a model.

    frames: [B, 3, S, S] float in [-1, 1]; each frame is scored at every t of ``timesteps`` (0..999), so
    the batch is B * len(timesteps). The training loss itself jumps with the random t of each step; this
    does not, so two models (or two moments of one run) compare directly. Lower is better.
    """
    device = next(model.unet.parameters()).device
    frames = frames.to(device, torch.float32)
    z_id, z_lnd, mask = (a.repeat_interleave(len(timesteps), 0) for a in encode_conditions(model.encoder, frames))
    x_0 = frames.repeat_interleave(len(timesteps), 0)  # [B * T, 3, S, S], frame-major
    t = torch.tensor(list(timesteps), dtype=torch.int64, device=device).repeat(len(frames))
    generator = torch.Generator(device).manual_seed(seed)
    eps = torch.randn((2, *x_0.shape), generator=generator, device=device)
    denoiser, was_training = _Denoiser(model), model.unet.training

    def eps_model(x_t: Tensor, t_: Tensor) -> Tensor:
        return denoiser(x_t, t_, z_id.repeat(2, 1), z_lnd.repeat(2, 1))

    model.unet.eval()
    try:
        return dva_loss(eps_model, x_0, mask, t=t, eps_1=eps[0], eps_2=eps[1],
                        alpha_bar=alpha_bar_schedule().to(device))
    finally:
        model.unet.train(was_training)


def _ema_copy(model: DVAModel) -> DVAModel:
    """A frozen copy of ``model`` for the EMA weights, SHARING the frozen encoders' tensors (no extra memory)."""
    shared = {id(p): p for name, p in model.named_parameters() if not is_trainable(name)}
    shared.update({id(b): b for b in model.buffers()})
    ema = copy.deepcopy(model, memo=shared)
    ema.eval().requires_grad_(False)
    return ema


class Trainer:
    """The training state of one process: model, EMA copy, optimiser, gradient scaler, step count.

    model: a ``DVAModel`` in float32 on ``device`` (same initial weights on every process). Its UNet and
    z_face linear are trained in place; the ArcFace, landmark and parser weights are frozen.
    """

    def __init__(self, model: DVAModel, config: TrainConfig, *, device: torch.device):
        if config.precision == "fp16" and device.type != "cuda":
            raise UserError("fp16 mixed precision needs a CUDA device; use --precision bf16 or fp32 on CPU.")
        self.config, self.device, self.step = config, device, 0
        self.rank, self.world_size = _world()
        self.model = model.to(device)
        for name, param in model.named_parameters():
            param.requires_grad_(is_trainable(name))
        model.unet.train()
        model.encoder.eval()
        denoiser = _Denoiser(model)
        if self.world_size > 1:  # broadcasts rank 0's weights, then averages gradients over the processes
            denoiser = nn.parallel.DistributedDataParallel(
                denoiser, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.denoiser = denoiser
        self.ema_model = _ema_copy(model)
        self._trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        ema_params = dict(self.ema_model.named_parameters())
        self._ema = [ema_params[n] for n, _ in self._trained]
        self.optimizer = torch.optim.Adam([p for _, p in self._trained], lr=config.lr)
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
        self.alpha_bar = alpha_bar_schedule().to(device)
        self._cache: Dict[str, Tuple[Tensor, Tensor, Tensor]] = {}
        torch.manual_seed(derive_seed(config.seed, "dropout", self.rank))  # this process's dropout RNG

    def _conditions(self, frames: Tensor, keys: Sequence[str]) -> Tuple[Tensor, Tensor, Tensor]:
        """(z_id, z_lnd, mask) of the frames; with the cache, each frame is encoded alone, once."""
        if not self.config.cache_encodings:
            return encode_conditions(self.model.encoder, frames)
        for index, key in enumerate(keys):
            if key not in self._cache:
                z_id, z_lnd, mask = encode_conditions(self.model.encoder, frames[index:index + 1])
                self._cache[key] = (z_id[0], z_lnd[0], mask[0].bool())
        z_id, z_lnd, mask = zip(*(self._cache[key] for key in keys))
        return torch.stack(z_id), torch.stack(z_lnd), torch.stack(mask).float()

    def train_step(self, frames: Tensor, keys: Sequence[str]) -> Tensor:
        """One optimiser step on this process's frames [B, 3, S, S] in [-1, 1] (``keys`` name them).

        Returns [loss, L_simple, L_reg] float32 averaged over all processes.
        """
        x_0 = frames.to(self.device, torch.float32, non_blocking=True)
        z_id, z_lnd, mask = self._conditions(x_0, keys)
        seed = derive_seed(self.config.seed, "noise", self.step, self.rank)
        generator = torch.Generator(self.device).manual_seed(seed)
        t, eps_1, eps_2 = draw_noise(x_0, generator)
        autocast = torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES.get(self.config.precision),
                                  enabled=self.config.precision != "fp32")

        def eps_model(x_t: Tensor, t_: Tensor) -> Tensor:  # both views in one call: [2B, ...]
            with autocast:
                return self.denoiser(x_t, t_, z_id.repeat(2, 1), z_lnd.repeat(2, 1))

        terms = dva_loss(eps_model, x_0, mask, t=t, eps_1=eps_1, eps_2=eps_2, alpha_bar=self.alpha_bar)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms.loss).backward()
        self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_([p for _, p in self._trained], self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self._update_ema()
        self.step += 1
        metrics = torch.stack([terms.loss.detach(), terms.simple, terms.reg])
        if self.world_size > 1:
            dist.all_reduce(metrics)
            metrics /= self.world_size
        return metrics.cpu()

    @torch.no_grad()
    def _update_ema(self) -> None:
        """ema = decay * ema + (1 - decay) * weights, for every trained tensor (as released)."""
        trained = [p for _, p in self._trained]
        torch._foreach_mul_(self._ema, self.config.ema_decay)
        torch._foreach_add_(self._ema, trained, alpha=1.0 - self.config.ema_decay)

    def state_dict(self) -> Dict[str, Any]:
        """Everything a resume needs. Collective: every process must call it (it gathers their RNG states)."""
        rng = {"cpu": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}
        states = [rng]
        if self.world_size > 1:
            states = [None] * self.world_size
            dist.all_gather_object(states, rng)
        return {
            "format": TRAIN_STATE_FORMAT,
            "step": self.step,
            "world_size": self.world_size,
            "config": json.dumps(dataclasses.asdict(self.config)),
            "weights": {n: p.detach().cpu().clone() for n, p in self._trained},
            "ema": {n: p.detach().cpu().clone() for (n, _), p in zip(self._trained, self._ema)},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": states,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue from ``state_dict()``; RNG states are restored when the process count is unchanged."""
        if state.get("format") != TRAIN_STATE_FORMAT:
            raise UserError(
                f"Not a DVA training state (format {state.get('format')!r}, expected {TRAIN_STATE_FORMAT})."
            )
        names = [n for n, _ in self._trained]
        if sorted(state["weights"]) != sorted(names) or sorted(state["ema"]) != sorted(names):
            raise UserError(
                "The training state holds other tensors than this model trains; resume with the same model size."
            )
        with torch.no_grad():
            for (name, param), ema in zip(self._trained, self._ema):
                param.copy_(state["weights"][name])
                ema.copy_(state["ema"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        if int(state["world_size"]) == self.world_size:
            rng = state["rng"][self.rank]
            torch.set_rng_state(rng["cpu"])
            if self.device.type == "cuda" and rng["cuda"] is not None:
                torch.cuda.set_rng_state(rng["cuda"], self.device)
        else:
            log.warning("Resuming %d processes from a %d-process run: training continues, but not bit for bit.",
                        self.world_size, state["world_size"])
            torch.manual_seed(derive_seed(self.config.seed, "dropout", self.rank, self.step))


def fit(
    trainer: Trainer,
    batches: Iterable[Tuple[Tensor, Sequence[str]]],
    *,
    total_steps: int,
    callback: Optional[Callable[[StepReport], None]] = None,
) -> None:
    """Run ``trainer.train_step`` on each (frames, keys) of ``batches`` until ``total_steps`` steps are done.

    ``batches`` must yield the items of steps trainer.step, trainer.step + 1, ... (``train_data.StepFrames``
    indexed from there). After every step ``callback(StepReport)`` is called on every process; it may
    save checkpoints (collectively) or raise to stop.
    """
    durations = collections.deque(maxlen=RATE_WINDOW)
    tick = time.perf_counter()
    for frames, keys in batches:
        if trainer.step >= total_steps:
            break
        metrics = trainer.train_step(frames, keys).tolist()
        now = time.perf_counter()
        durations.append(now - tick)
        tick = now
        seconds_per_step = sum(durations) / len(durations)
        report = StepReport(
            step=trainer.step, total=total_steps, loss=metrics[0], simple=metrics[1], reg=metrics[2],
            frames_per_second=len(frames) * trainer.world_size / seconds_per_step,
            eta_seconds=(total_steps - trainer.step) * seconds_per_step,
        )
        if callback is not None:
            callback(report)


def save_training_state(path: Path, state: Dict[str, Any]) -> Path:
    """Write a ``Trainer.state_dict()`` (plus any JSON-able extras) with torch.save, atomically."""
    path = Path(path)
    write_atomically(path, lambda tmp: torch.save(state, tmp))
    return path


def load_training_state(path: Path) -> Dict[str, Any]:
    """Read a file of ``save_training_state`` (tensors and plain containers only; no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"No training state at {path}; start without --resume or point --out at the run folder."
        )
    state = load_pickled(path, what="The training state")
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}, not a DVA training state.")
    return state
