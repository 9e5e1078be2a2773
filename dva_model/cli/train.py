"""``train``: train (or fine-tune) a DVA on folders of aligned clips, on one process or many (torchrun).

    python -m dva_model train DATA --out RUN --weights FILE --steps N [options]
    torchrun --nproc_per_node 4 -m dva_model train DATA --out RUN --weights FILE --steps N [options]

DATA holds one sub-folder of aligned crops per video, and/or video files, which are aligned once by the
face pipeline into RUN/aligned (or --aligned-cache) and reused by later runs. RUN receives
``model.safetensors`` (the EMA weights; loads in DVAModelLoader and every other command),
``train_state.pt`` (what ``--resume`` needs) and ``previews/step-NNNNNNN.png`` (top row: frames, bottom
row: their DDIM reconstructions by the EMA model). This module holds the policy (when to log, save,
preview); the mechanics are in dva_model.train.trainer.
"""

import argparse
import dataclasses
import datetime
import json
import logging
import os
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from dva_model.formats import checkpoint
from dva_model.face.align import AlignConfig
from dva_model.formats.checkpoint import load_model, save_model
from dva_model.formats.files import check_writable_folder, write_atomically
from dva_model.cli.align import add_face_options, landmarker_from_args
from dva_model.cli.common import add_encoder_options, encoder_files_from_args
from dva_model.cli.options import finite_float
from dva_model.distributed import Workers, close
from dva_model.errors import UserError
from dva_model.formats.image_io import crops_to_uint8
from dva_model.model import DVAConfig, DVAModel
from dva_model.train.trainer import (
    Precision, StepReport, TrainConfig, Trainer, encode_conditions, evaluation_loss, fit, is_trainable,
    load_training_state, save_training_state,
)
from dva_model.face.tracking import TrackConfig
from dva_model.cli.progress_bar import terminal_progress
from dva_model.train.data import DataConfig, StepFrames, align_videos, list_clips, list_videos, preview_frames
from dva_model.nets.unet import UNetConfig

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.pt"
PREVIEW_DIR = "previews"
ALIGNED_DIR = "aligned"
EVAL_TIMESTEPS = (50, 200, 400, 600, 800, 950)  # fixed-noise score of the EMA model on the preview frames
UNET_OPTIONS = ("image_size", "model_channels", "channel_mult", "num_res_blocks", "attention_resolutions",
                "num_heads", "dropout", "embed_channels")


def _ints(text: str) -> Tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,1,2,2,4,4, got {text!r}")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train or fine-tune a DVA on aligned clips (torchrun for several GPUs)",
        description="Train the UNet and z_face layer with the published objective (two noises per frame, "
                    "L1 noise loss + L1 between masked x0 predictions), Adam, gradient clipping and an EMA; "
                    "ArcFace, landmark net and face parser stay frozen.",
    )
    parser.add_argument("data", type=Path,
                        help="folder of clip folders (DATA/<video>/<frame>.png) and/or video files")
    parser.add_argument("--out", type=Path, required=True, help="run folder (model, training state, previews)")
    parser.add_argument("--steps", type=int, help="train until this many steps are done (required to train)")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    source = parser.add_argument_group("initial weights (ignored with --resume)")
    source.add_argument("--weights", type=Path,
                        help="DVA checkpoint (released .ckpt or .safetensors) supplying the frozen encoders")
    source.add_argument("--finetune", action="store_true",
                        help="also start the UNet and z_face layer from --weights (else they start random)")
    add_encoder_options(source, optional=False)
    size = parser.add_argument_group("UNet size for a new model (default: the released 256x256 model)")
    size.add_argument("--image-size", type=int, help="square crop side the UNet trains at (256)")
    size.add_argument("--model-channels", type=int, help="base width (128)")
    size.add_argument("--channel-mult", type=_ints, help="width multiplier per level (1,1,2,2,4,4)")
    size.add_argument("--num-res-blocks", type=int, help="ResBlocks per level going down (2)")
    size.add_argument("--attention-resolutions", type=_ints, help="feature sizes with attention (16)")
    size.add_argument("--num-heads", type=int, help="attention heads (1)")
    size.add_argument("--dropout", type=finite_float, help="ResBlock dropout (0.1)")
    size.add_argument("--embed-channels", type=int, help="time-embedding width (512)")
    optim = parser.add_argument_group("optimisation (defaults: published)")
    optim.add_argument("--lr", type=finite_float, default=1e-4)
    optim.add_argument("--grad-clip", type=finite_float, default=1.0, help="maximum gradient norm")
    optim.add_argument("--ema-decay", type=finite_float, default=0.9999)
    optim.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default=None,
                       help="autocast of the UNet (default: fp16 on CUDA, as published; fp32 on CPU)")
    optim.add_argument("--seed", type=int, default=0)
    data = parser.add_argument_group("data")
    data.add_argument("--frames-per-video", type=int, default=4, help="frames of one video per item (4)")
    data.add_argument("--videos-per-rank", type=int, default=1, help="items per process and step (1)")
    data.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    data.add_argument("--workers", type=int, default=2, help="frame-loading processes per training process")
    data.add_argument("--cache-encodings", action="store_true",
                      help="keep each frame's encoder outputs in memory (small data sets, small UNets)")
    videos = parser.add_argument_group("raw videos in DATA (aligned once, then reused)")
    videos.add_argument("--aligned-cache", type=Path, help="folder for the aligned crops (default: RUN/aligned)")
    videos.add_argument("--align-only", action="store_true",
                        help="align the videos and stop (do this first for large data sets; it runs before "
                             "any process waits on another)")
    add_face_options(videos)
    policy = parser.add_argument_group("logging, checkpoints, previews")
    policy.add_argument("--log-every", type=int, default=50, help="steps between progress lines")
    policy.add_argument("--save-every", type=int, default=5000, help="steps between checkpoints (always at the end)")
    policy.add_argument("--preview-every", type=int, default=1000, help="steps between previews (0: none)")
    policy.add_argument("--preview-frames", type=int, default=4, help="clips shown in a preview")
    policy.add_argument("--preview-steps", type=int, default=20, help="DDIM steps of a preview reconstruction")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda or cpu (under torchrun each process takes cuda:LOCAL_RANK)")
    parser.add_argument("--deterministic", action="store_true",
                        help="deterministic GPU kernels (slower), for bit-identical resumes on GPU as on CPU")
    parser.set_defaults(func=run)


def _unet_config(args: argparse.Namespace) -> Optional[UNetConfig]:
    """The UNet size asked for on the command line, or None when no size option was given."""
    given = {name: getattr(args, name) for name in UNET_OPTIONS if getattr(args, name) is not None}
    return UNetConfig(**given) if given else None


def _initial_model(args: argparse.Namespace) -> DVAModel:
    """A float32 CPU model: fine-tuned from --weights, or a seeded random UNet beside the frozen encoders."""
    files, size = encoder_files_from_args(args), _unet_config(args)
    if args.finetune:
        if args.weights is None:
            raise UserError("--finetune needs --weights (the checkpoint to start from).")
        if size is not None:
            raise UserError("--finetune keeps the checkpoint's UNet size; drop the size options or train a new model.")
        return load_model(args.weights, encoder_files=files)
    torch.manual_seed(args.seed)  # the same random UNet on every process and in every rerun
    model = DVAModel(config=DVAConfig(unet=size or UNetConfig()))
    if args.weights is not None:
        frozen = {k: v for k, v in load_model(args.weights, encoder_files=files).state_dict().items()
                  if not is_trainable(k)}
        model.load_state_dict({**model.state_dict(), **frozen}, strict=True)
    elif files is not None and files.identity and files.landmarks and files.parser:
        checkpoint.load_encoder_files(model, files)
    else:
        raise UserError(
            "The frozen encoders need weights: pass --weights (a DVA checkpoint) or all three of --id-weights, "
            "--landmark-weights and --parser-weights (the released pretrained_models files)."
        )
    return model


def _training_clips(args: argparse.Namespace, device: torch.device, workers: Workers):
    """Clip folders of DATA plus the aligned videos of DATA (the processes share the aligning)."""
    videos, roots = list_videos(args.data), [args.data]
    if videos:
        cache = args.aligned_cache or args.out / ALIGNED_DIR
        landmarker = landmarker_from_args(args, device=str(device), one_clip=False)
        align_videos(videos[workers.rank::workers.world], cache, landmarker=landmarker,
                     align=AlignConfig(method=args.align_method), track=TrackConfig(max_gap=args.max_gap),
                     callback=terminal_progress("align videos", enabled=not args.quiet and workers.is_root))
        workers.barrier()
        roots.append(cache)
    return list_clips(*roots)


def _run_info(args: argparse.Namespace, data: DataConfig) -> str:
    return json.dumps({"data": dataclasses.asdict(data), "steps": args.steps})


def _warn_on_changes(state: Dict, config: TrainConfig, info: str) -> None:
    """Resuming with other settings is allowed, but the run is then no longer the same run."""
    before = {**json.loads(state["config"]), **json.loads(state.get("run", "{}")).get("data", {})}
    now = {**dataclasses.asdict(config), **json.loads(info)["data"]}
    changed = sorted(k for k in now if k in before and before[k] != now[k])
    if changed:
        log.warning("resuming with changed settings (%s): training continues, but not as the saved run would have.",
                    ", ".join(f"{k} {before[k]} -> {now[k]}" for k in changed))


def _save(trainer: Trainer, out: Path, info: str, workers: Workers) -> None:
    """Write the EMA model file and the training state (collective; rank 0 writes)."""
    state = trainer.state_dict()
    if workers.is_root:
        save_model(out / MODEL_FILE, trainer.ema_model)
        save_training_state(out / STATE_FILE, {**state, "run": info})
        log.info("step %d: saved %s and %s", trainer.step, out / MODEL_FILE, STATE_FILE)
    workers.barrier()


def save_preview(model: DVAModel, frames: torch.Tensor, path: Path, *, steps: int) -> Path:
    """PNG of frames [N, 3, S, S] in [-1, 1] (top row) above their DDIM invert-then-decode reconstructions."""
    from PIL import Image

    frames = frames.to(next(model.parameters()).device)
    z_id, z_lnd, _ = encode_conditions(model.encoder, frames)
    x_T = model.invert(frames, z_id, z_lnd, steps=steps)
    reconstruction = model.decode(x_T, z_id, z_lnd, steps=steps)
    rows = [np.concatenate(list(crops_to_uint8(row)), axis=1) for row in (frames, reconstruction)]  # [S, N*S, 3]
    write_atomically(path, lambda tmp: Image.fromarray(np.concatenate(rows, axis=0)).save(tmp, format="PNG"))
    return path


def _format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


def _use_deterministic_kernels() -> None:
    """Ask cuDNN / cuBLAS for reproducible kernels (before the first CUDA call); warn where an op has none."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def run(args: argparse.Namespace) -> int:
    if args.deterministic:
        _use_deterministic_kernels()
    workers, device = Workers.from_environment(args.device)
    try:
        return _train(args, torch.device(device), workers)
    finally:
        close(workers)


def _train(args: argparse.Namespace, device: torch.device, workers: Workers) -> int:
    if not workers.is_root:
        logging.getLogger().setLevel(logging.WARNING)  # one process reports
    if args.steps is None and not args.align_only:
        raise UserError("--steps is required: give the number of training steps to reach.")
    if not args.resume and (args.out / STATE_FILE).exists():
        raise UserError(f"{args.out} already holds a run; pass --resume to continue it or choose another --out.")
    check_writable_folder(args.out, what="the run folder")
    precision: Precision = args.precision or ("fp16" if device.type == "cuda" else "fp32")
    config = TrainConfig(lr=args.lr, grad_clip=args.grad_clip, ema_decay=args.ema_decay, precision=precision,
                         seed=args.seed, cache_encodings=args.cache_encodings)
    data = DataConfig(frames_per_video=args.frames_per_video, videos_per_rank=args.videos_per_rank,
                      flip=not args.no_flip, seed=args.seed)
    info = _run_info(args, data)
    clips = _training_clips(args, device, workers)
    if args.align_only:
        log.info("%d clips ready for training", len(clips))
        return 0

    trainer = _make_trainer(args, config, info, device)
    image_size = trainer.model.config.unet.image_size
    log.info("%d clips, %d process(es), %d frames per step, UNet %.1f M parameters at %dx%d, %s",
             len(clips), trainer.world_size, data.videos_per_rank * data.frames_per_video * trainer.world_size,
             sum(p.numel() for p in trainer.model.unet.parameters()) / 1e6, image_size, image_size, precision)
    if trainer.step >= args.steps:
        log.info("%s is already at step %d; raise --steps to train further.", args.out, trainer.step)
        return 0
    frames = StepFrames(clips, image_size=image_size, config=data, rank=workers.rank, world_size=trainer.world_size)
    loader = torch.utils.data.DataLoader(
        frames, sampler=range(trainer.step, args.steps), batch_size=None, num_workers=args.workers,
        pin_memory=device.type == "cuda", generator=torch.Generator(),  # never draw from the global RNG
    )
    previews = preview_frames(clips, count=args.preview_frames, image_size=image_size) if workers.is_root else None
    args.out.mkdir(parents=True, exist_ok=True)
    fit(trainer, loader, total_steps=args.steps, callback=_step_policy(args, trainer, info, previews, workers))
    return 0


def _make_trainer(args: argparse.Namespace, config: TrainConfig, info: str, device: torch.device) -> Trainer:
    """A new run from the initial weights, or (--resume) the saved run of --out."""
    if not args.resume:
        return Trainer(_initial_model(args), config, device=device)
    state = load_training_state(args.out / STATE_FILE)
    trainer = Trainer(load_model(args.out / MODEL_FILE), config, device=device)  # frozen encoders from the run
    _warn_on_changes(state, config, info)
    trainer.load_state_dict(state)
    log.info("resumed %s at step %d", args.out, trainer.step)
    return trainer


def _step_policy(args: argparse.Namespace, trainer: Trainer, info: str, previews: Optional[torch.Tensor],
                 workers: Workers):
    """The callback ``fit`` calls after each step: progress lines, checkpoints and previews."""

    def due(step: int, every: int) -> bool:  # every `every` steps, and at the last step
        return (every > 0 and step % every == 0) or step == args.steps

    def on_step(report: StepReport) -> None:
        if due(report.step, args.log_every):
            log.info("step %d/%d  loss %.4f (simple %.4f, reg %.4f)  %.1f frames/s  ETA %s",
                     report.step, report.total, report.loss, report.simple, report.reg,
                     report.frames_per_second, _format_eta(report.eta_seconds))
        if due(report.step, args.save_every):
            _save(trainer, args.out, info, workers)
        if workers.is_root and args.preview_every > 0 and due(report.step, args.preview_every):
            path = save_preview(trainer.ema_model, previews, args.out / PREVIEW_DIR / f"step-{report.step:07d}.png",
                                steps=args.preview_steps)
            score = evaluation_loss(trainer.ema_model, previews, timesteps=EVAL_TIMESTEPS, seed=args.seed)
            log.info("preview %s; EMA loss on these frames at fixed noise %.4f (simple %.4f, reg %.4f)",
                     path, score.loss.item(), score.simple.item(), score.reg.item())

    return on_step
