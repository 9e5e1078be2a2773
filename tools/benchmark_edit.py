"""``benchmark.py edit``: seconds per frame of every stage of a whole video edit, ours vs the reference setting.

Each setting runs in its own process (so peak memory is its own) through the library's ``edit_video``;
the stages are timed by wrapping the library functions that do them (no timing code in the library):

    decode video  frames read from the file (every pass)      detect   face detection + landmarks
    align/warp    crops warped out of the frames               encode   ArcFace + landmark features
    edit          the clip identity and its edited version     invert   DDIM inversion
    decode        DDIM decoding                                parse    BiSeNet masks
    paste         edited crops pasted into the frames          write    video encoding and muxing

Both outputs are written losslessly and compared frame by frame (max difference in 1/255 levels).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

STAGES = ("decode video", "detect", "align/warp", "encode", "edit", "invert", "decode", "parse", "paste", "write")


class StageClock:
    """Accumulates seconds per stage; ``wrap`` times a function, ``wrap_iterator`` each ``next`` of an iterator."""

    def __init__(self, device: str):
        self.seconds, self.device = defaultdict(float), device

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def wrap(self, stage: str, fn):
        def timed(*args, **kwargs):
            self._sync()
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._sync()
                self.seconds[stage] += time.perf_counter() - start
        return timed

    def wrap_iterator(self, stage: str, fn):
        def iterate(*args, **kwargs):
            iterator = iter(fn(*args, **kwargs))
            while True:
                start = time.perf_counter()
                try:
                    item = next(iterator)
                except StopIteration:
                    return
                finally:
                    self.seconds[stage] += time.perf_counter() - start
                yield item
        return iterate


def instrument(clock: StageClock, model, landmarker) -> None:
    """Wrap the pipeline's stage functions (module globals and the model's methods) with ``clock``."""
    from dva_model import pipeline
    from dva_model.formats import video

    pipeline.iter_frames = clock.wrap_iterator("decode video", pipeline.iter_frames)
    pipeline.align_frames = clock.wrap("align/warp", pipeline.align_frames)
    pipeline.edited_identity = clock.wrap("edit", pipeline.edited_identity)
    pipeline.paste_back = clock.wrap("paste", pipeline.paste_back)
    video.VideoWriter.write = clock.wrap("write", video.VideoWriter.write)
    video.VideoWriter.close = clock.wrap("write", video.VideoWriter.close)
    for stage, name in (("encode", "encode_features"), ("invert", "invert"), ("decode", "decode"), ("parse", "parse")):
        setattr(model, name, clock.wrap(stage, getattr(model, name)))
    landmarker.detector.detect = clock.wrap("detect", landmarker.detector.detect)
    landmarker.predictor.landmarks = clock.wrap("detect", landmarker.predictor.landmarks)


def run_one(args) -> dict:
    """One setting in this process: load, instrument, edit, report seconds per frame."""
    from dva_model.face.landmarks import make_landmarker
    from dva_model.formats.checkpoint import load_model
    from dva_model.formats.video import FrameSelection
    from dva_model.pipeline import EditConfig, edit_video
    from benchmark import REFERENCE_BATCH, peak_memory, prepare, unet_flops, warm_up

    reference = args.role == "reference"
    model = load_model(args.checkpoint, device=args.device)
    if not reference:
        prepare(model, args)
    batch = REFERENCE_BATCH if reference else args.batch_size
    warm = warm_up(model, torch.zeros(batch, 3, model.image_size, model.image_size), batch, args.device)
    compile_s = 0.0 if reference else warm  # the reference's warm-up only settles the allocator / cuDNN
    landmarker = make_landmarker(detector="dlib", landmarks="dlib")
    if not reference and args.detect_every > 1:
        from dva_model.face.keyframe import keyframe_landmarker

        landmarker = keyframe_landmarker(landmarker, every=args.detect_every)
    clock = StageClock(args.device)
    instrument(clock, model, landmarker)
    start = time.perf_counter()
    result = edit_video(args.video, args.out, model, landmarker, config=EditConfig(
        steps=args.steps, batch_size=batch, lossless=True), selection=FrameSelection(max_frames=args.max_frames))
    total = time.perf_counter() - start
    frames = result.frames
    stage_seconds = {stage: clock.seconds.get(stage, 0.0) for stage in STAGES}
    unet_s = stage_seconds["invert"] + stage_seconds["decode"]
    frame_forwards = result.edited * (2 * args.steps - 1)
    flops = unet_flops(model, model.image_size, args.device)
    return {
        "role": args.role, "mode": "eager" if reference else model.runner.options.describe(),
        "precision": "fp32" if reference else args.precision, "batch_size": batch, "frames": frames,
        "s_per_frame": {**{k: v / frames for k, v in stage_seconds.items()}, "total": total / frames},
        "unet_ms_per_frame_forward": 1000 * unet_s / frame_forwards,
        "tflop_per_s": flops * frame_forwards / unet_s / 1e12, "compile_s": compile_s, **peak_memory(args.device),
    }


def frame_difference(a: Path, b: Path) -> int:
    """Largest per-pixel difference (uint8 levels) between two videos of the same frames."""
    from dva_model.formats.video import iter_frames

    worst = 0
    for (_, x), (_, y) in zip(iter_frames(a, dtype=torch.uint8), iter_frames(b, dtype=torch.uint8)):
        worst = max(worst, int((x.int() - y.int()).abs().max()))
    return worst


def run_edit(args) -> dict:
    if args.role:
        return run_one(args)
    args.work.mkdir(parents=True, exist_ok=True)
    results = {}
    for role in ("reference", "ours"):
        out = args.work / f"{role}.mp4"
        command = [sys.executable, __file__.replace("benchmark_edit.py", "benchmark.py"), *sys.argv[1:],
                   "--role", role, "--out", str(out)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"the {role} run failed:\n{done.stderr[-3000:]}")
        results[role] = json.loads(done.stdout)
    results["output_difference_levels"] = frame_difference(args.work / "ours.mp4", args.work / "reference.mp4")
    results["speedup_total"] = results["reference"]["s_per_frame"]["total"] / results["ours"]["s_per_frame"]["total"]
    print_table(results)
    return results


def print_table(results: dict) -> None:
    rows = [*STAGES, "total"]
    lines = [f"{'s/frame':<14}{'reference':>12}{'ours':>12}"]
    for stage in rows:
        ref, ours = results["reference"]["s_per_frame"][stage], results["ours"]["s_per_frame"][stage]
        lines.append(f"{stage:<14}{ref:>12.4f}{ours:>12.4f}")
    for key in ("unet_ms_per_frame_forward", "tflop_per_s", "peak_host_gb", "compile_s"):
        lines.append(f"{key:<26}" + "".join(f"{results[r].get(key, float('nan')):>12.3f}" for r in ("reference", "ours")))
    sys.stderr.write("\n".join(lines) + "\n")


def add_parser(commands, add_speed_options) -> None:
    edit = commands.add_parser("edit", help="a whole video edit: seconds per frame per stage")
    edit.add_argument("--checkpoint", type=Path, required=True)
    edit.add_argument("--video", type=Path, required=True)
    edit.add_argument("--max-frames", type=int, help="edit only the first N frames")
    edit.add_argument("--detect-every", type=int, default=1, help="our face detection every K frames (keyframe tracking)")
    edit.add_argument("--work", type=Path, default=Path("/tmp/dva-benchmark"), help="where the outputs go")
    edit.add_argument("--role", choices=("reference", "ours"), help=argparse.SUPPRESS)
    edit.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    add_speed_options(edit)
    edit.set_defaults(func=run_edit)
