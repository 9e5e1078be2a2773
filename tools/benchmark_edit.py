"""``benchmark.py edit``: seconds per frame of every stage of a whole video edit, ours vs the reference setting.

Each setting runs in its own process (so peak memory is its own) through the library's ``edit_video``;
the stages are timed by wrapping the library functions that do them (no timing code in the library):

    decode video  frames read from the file (every pass)      detect   face detection + landmarks
    align/warp    crops warped out of the frames               encode   ArcFace + landmark features
    edit          the clip identity and its edited version     invert   DDIM inversion
    decode        DDIM decoding                                parse    BiSeNet masks
    paste         edited crops pasted into the frames          write    video encoding and muxing

Decoding, warping, paste-back and writing run in worker threads beside the model (the streaming
pipeline), so the stages overlap and their seconds can add up to more than the total, which is wall time.
Both outputs are written losslessly and compared frame by frame (max difference in 1/255 levels).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

STAGES = ("decode video", "detect", "align/warp", "encode", "edit", "invert", "decode", "parse", "paste", "write")


# (stage, module, function, kind): the library functions that do each stage, wrapped where the pipeline
# looks them up. "iterator" times each item of a generator. A name that moved fails loudly (SystemExit).
PIPELINE_FUNCTIONS = (
    ("decode video", "dva_model.tracks", "iter_frames", "iterator"),
    ("align/warp", "dva_model.tracks", "align_frames", "call"),
    ("edit", "dva_model.pipeline", "compose_identity_edits", "call"),
    ("paste", "dva_model.stages", "paste_frames", "call"),
    ("write", "dva_model.formats.video", "VideoWriter.write", "call"),
    ("write", "dva_model.formats.video", "VideoWriter.close", "call"),
)
MODEL_METHODS = (("encode", "encode_features"), ("invert", "invert"), ("decode", "decode"), ("parse", "parse"))


def instrument(clock: StageClock, model, landmarker) -> None:
    """Wrap the pipeline's stage functions (``PIPELINE_FUNCTIONS``, the model's methods, the landmarker)."""
    import importlib

    for stage, module_name, name, kind in PIPELINE_FUNCTIONS:
        owner = importlib.import_module(module_name)
        *path, attribute = name.split(".")
        for part in path:
            owner = getattr(owner, part)
        if not hasattr(owner, attribute):
            raise SystemExit(f"benchmark edit: {module_name} has no {name} any more; update PIPELINE_FUNCTIONS "
                             f"in {__file__} to the function that does the {stage!r} stage now.")
        wrap = clock.wrap_iterator if kind == "iterator" else clock.wrap
        setattr(owner, attribute, wrap(stage, getattr(owner, attribute)))
    for stage, name in MODEL_METHODS:
        setattr(model, name, clock.wrap(stage, getattr(model, name)))
    landmarker.detector.detect = clock.wrap("detect", landmarker.detector.detect)
    landmarker.predictor.landmarks = clock.wrap("detect", landmarker.predictor.landmarks)


def run_one(args) -> dict:
    """One setting in this process: load, instrument, edit; returns seconds per stage and what they count."""
    from dva_model.face.landmarks import make_landmarker
    from dva_model.formats.checkpoint import load_model
    from dva_model.formats.video import FrameSelection
    from dva_model.pipeline import EditConfig, edit_video
    from benchmark import REFERENCE_BATCH, StageClock, peak_memory, prepare, unet_flops, warm_up

    reference = args.role == "reference"
    model = load_model(args.checkpoint, device=args.device)
    if not reference:
        prepare(model, args)
    batch = REFERENCE_BATCH if reference else args.batch_size
    warm = warm_up(model, torch.zeros(batch, 3, model.image_size, model.image_size), batch, args.device)
    compiles = not reference and (args.compile or args.cuda_graphs)
    landmarker = make_landmarker(detector="dlib", landmarks="dlib")
    if not reference and args.detect_every > 1:
        from dva_model.face.keyframe import keyframe_landmarker

        landmarker = keyframe_landmarker(landmarker, every=args.detect_every)
    clock = StageClock(args.device)
    instrument(clock, model, landmarker)
    start = time.perf_counter()
    result = edit_video(args.video, args.out, model, landmarker, config=EditConfig(
        steps=args.steps, batch_size=batch, lossless=True), selection=FrameSelection(max_frames=args.max_frames))
    seconds = {stage: clock.seconds.get(stage, 0.0) for stage in STAGES}
    return {
        "seconds": {**seconds, "total": time.perf_counter() - start}, "frames": result.frames,
        "edited": result.edited, "flops": unet_flops(model, model.image_size, args.device),
        "mode": "eager" if reference else model.runner.options.describe(),
        "precision": "fp32" if reference else args.precision, "batch_size": batch,
        "compile_s": warm if compiles else 0.0,  # the reference's warm-up only settles the allocator / cuDNN
        **peak_memory(args.device),
    }


def frame_difference(a: Path, b: Path) -> int:
    """Largest per-pixel difference (uint8 levels) between two videos of the same frames."""
    from dva_model.formats.video import iter_frames

    worst = 0
    for (_, x), (_, y) in zip(iter_frames(a, dtype=torch.uint8), iter_frames(b, dtype=torch.uint8)):
        worst = max(worst, int((x.int() - y.int()).abs().max()))
    return worst


def run_edit(args) -> dict:
    """Both settings alternately, each run in its own process (so its peak memory is its own)."""
    from benchmark import ROLES, print_table, summarize

    if args.role:
        return run_one(args)
    args.work.mkdir(parents=True, exist_ok=True)
    runs = {role: [] for role in ROLES}
    for _ in range(args.repeat):
        for role in ROLES:
            out = args.work / f"{role}.mp4"
            command = [sys.executable, __file__.replace("benchmark_edit.py", "benchmark.py"), *sys.argv[1:],
                       "--role", role, "--out", str(out)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"the {role} run failed:\n{done.stderr[-3000:]}")
            runs[role].append(json.loads(done.stdout))
    first = runs["ours"][0]
    frame_forwards = first["edited"] * (2 * args.steps - 1)
    results = {"video": str(args.video), "frames": first["frames"], "edited": first["edited"], "steps": args.steps,
               **summarize({role: [r["seconds"] for r in runs[role]] for role in ROLES}, frames=first["frames"],
                           frame_forwards=frame_forwards, flops=first["flops"])}
    for role in ROLES:
        last = runs[role][-1]
        results["runs"][role].update({key: last[key] for key in ("mode", "precision", "batch_size")})
        results["runs"][role]["compile_s"] = max(r["compile_s"] for r in runs[role])
        for key in ("peak_host_gb", "peak_device_gb"):
            if key in last:
                results["runs"][role][key] = max(r[key] for r in runs[role])
    with_compile = runs["ours"][0]["seconds"]["total"] + runs["ours"][0]["compile_s"]
    results["speedup_with_compile"] = runs["reference"][0]["seconds"]["total"] / with_compile
    results["output_difference"] = {"frame_max_levels": frame_difference(args.work / "ours.mp4",
                                                                         args.work / "reference.mp4")}
    print_table(results)
    return results


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
