"""Speed of DVA editing: our fast settings against the reference's setting, with the output difference.

    # the parity setup: a checkpoint and a folder of aligned crops; encode + invert + decode, side by side
    python tools/benchmark.py crops --checkpoint CKPT --aligned DIR --steps 10 --compile --channels-last --repeat 3
    # UNet-bound speed on random weights (the full-size model unless --model tiny) and random crops
    python tools/benchmark.py crops --model full --frames 16 --steps 2 --precision bf16 --batch-size 16
    # a whole video edit, seconds per frame for every stage (each setting in its own process)
    python tools/benchmark.py edit --checkpoint CKPT --video clip.mp4 --steps 100 --compile --channels-last

Every command runs "ours" (the options given) and "reference" (the release's setting: eager fp32,
4 frames per UNet call) on the same inputs and device, alternately ``--repeat`` times so that a busy
machine slows both alike, and prints a table (stderr) and a JSON document (stdout): seconds per frame of
each stage and in total (medians over the repeats), UNet ms per frame-forward and TFLOP/s, peak host
and device memory, the speed-up (median of the per-repeat ratios) and how far our output is from the
reference setting's (x_T relative, decoded pixels in 1/255). UNet TFLOP/s counts the FLOPs of one
forward with torch.utils.flop_counter (convolutions and matrix products). Compiling happens before the
timed runs and is reported apart ("compile_s"); "speedup_with_compile" charges it to one run.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run as tools/benchmark.py
from dva_model.constants import PRECISIONS  # noqa: E402
from dva_model.formats.checkpoint import load_model  # noqa: E402
from dva_model.model import DVAConfig, DVAModel, mean_identity  # noqa: E402
from dva_model.nets.unet import UNetConfig  # noqa: E402
from dva_model.testing import randomize_, tiny_crop_unet_config  # noqa: E402

REFERENCE_BATCH = 4  # the release's --batch_size
ROLES = ("reference", "ours")
CROP_STAGES = ("encode", "invert", "decode")


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


class StageClock:
    """Accumulates seconds per stage; ``wrap`` times a function, ``wrap_iterator`` each ``next`` of an iterator."""

    def __init__(self, device: str):
        self.seconds, self.device = defaultdict(float), str(device)
        self._lock = threading.Lock()  # the pipeline's worker threads add to it too

    def _add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] += seconds

    def wrap(self, stage: str, fn):
        def timed(*args, **kwargs):
            sync(self.device)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync(self.device)
                self._add(stage, time.perf_counter() - start)
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
                    self._add(stage, time.perf_counter() - start)
                yield item
        return iterate


def unet_flops(model: DVAModel, size: int, device) -> float:
    """FLOPs of one UNet forward on one frame (torch.utils.flop_counter: convolutions and matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    dtype = next(model.unet.parameters()).dtype
    x = torch.zeros(1, 3, size, size, device=device, dtype=dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.unet(x, torch.zeros(1, dtype=torch.long, device=device), torch.zeros(1, 512, device=device, dtype=dtype))
    return float(counter.get_total_flops())


def peak_memory(device: str) -> dict:
    """Peak resident host memory of this process and peak allocated device memory, in GB."""
    peak = {"peak_host_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if str(device).startswith("cuda"):
        peak["peak_device_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return peak


def prepare(model: DVAModel, args) -> DVAModel:
    model.unet.to(PRECISIONS[args.precision])
    return model.prepare(channels_last=args.channels_last, compile=args.compile, cuda_graphs=args.cuda_graphs)


def warm_up(model: DVAModel, crops: torch.Tensor, batch_size: int, device: str) -> float:
    """One UNet call per batch shape the run will use (compiles them); returns the seconds it took."""
    sizes = {min(batch_size, len(crops))} | ({len(crops) % batch_size} - {0})
    dtype = next(model.unet.parameters()).dtype
    start = time.perf_counter()
    with torch.no_grad():
        for size in sorted(sizes):
            model.runner(crops[:size].to(device, dtype), torch.zeros(size, dtype=torch.long, device=device),
                         torch.zeros(size, 512, device=device, dtype=dtype))
    sync(device)
    return time.perf_counter() - start


def summarize(runs: dict[str, list[dict]], *, frames: int, frame_forwards: int, flops: float) -> dict:
    """Medians over alternated repeats of {role: [{stage: seconds, ..., "total": s}, ...]}.

    Returns per role the seconds per frame of every stage and in total, UNet ms per frame-forward
    (the "invert" and "decode" stages) and TFLOP/s, and ``speedup``: the median of the per-repeat
    ratios reference / ours of the total time (each pair ran back to back, so load hits both alike).
    """
    summary = {"runs": {}}
    for role, repeats in runs.items():
        stages = {stage: statistics.median(r[stage] for r in repeats) for stage in repeats[0]}
        unet_s = stages.get("invert", 0.0) + stages.get("decode", 0.0)
        summary["runs"][role] = {
            "s_per_frame": {stage: seconds / frames for stage, seconds in stages.items()},
            "unet_ms_per_frame_forward": 1000 * unet_s / frame_forwards,
            "tflop_per_s": flops * frame_forwards / unet_s / 1e12 if unet_s else float("nan"),
            "all_totals_s": [round(r["total"], 2) for r in repeats],
        }
    if set(runs) == set(ROLES):
        pairs = list(zip(runs["reference"], runs["ours"]))
        summary["speedup"] = statistics.median(ref["total"] / ours["total"] for ref, ours in pairs)
        summary["speedup_unet"] = statistics.median((ref["invert"] + ref["decode"]) / (ours["invert"] + ours["decode"])
                                                    for ref, ours in pairs)
    return summary


def print_table(results: dict) -> None:
    """The per-stage table of ``summarize``'s results (plus the keys the commands add) on stderr."""
    runs = results["runs"]
    roles = [r for r in ROLES if r in runs]
    stages = list(runs[roles[-1]]["s_per_frame"])
    lines = [f"{'s/frame':<28}" + "".join(f"{role:>12}" for role in roles)]
    lines += [f"{stage:<28}" + "".join(f"{runs[r]['s_per_frame'][stage]:>12.4f}" for r in roles) for stage in stages]
    for key in ("unet_ms_per_frame_forward", "tflop_per_s", "compile_s", "peak_host_gb", "peak_device_gb", "batch_size"):
        if any(key in runs[r] for r in roles):
            lines.append(f"{key:<28}" + "".join(f"{float(runs[r].get(key, float('nan'))):>12.3f}" for r in roles))
    if "speedup" in results:
        lines.append(f"speed-up (median of {len(runs['ours']['all_totals_s'])}): total {results['speedup']:.2f}x, "
                     f"UNet {results['speedup_unet']:.2f}x, total with compiling {results['speedup_with_compile']:.2f}x")
    if "output_difference" in results:
        lines.append("ours vs reference setting: " + ", ".join(f"{k} {v:.3g}" for k, v in results["output_difference"].items()))
    sys.stderr.write("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------------
# crops: the parity setup (or random weights and crops)


def time_crops(model: DVAModel, crops: torch.Tensor, *, steps: int, batch_size: int, device: str) -> tuple[dict, dict]:
    """Encode, invert and decode ``crops``; returns ({stage: seconds, "total": s}, {"x_T", "decoded"} on the CPU)."""
    clock = StageClock(device)
    with torch.no_grad():
        z_id, z_lnd = clock.wrap("encode", model.encode_features)(crops, batch_size=batch_size)
        identity = mean_identity(z_id)
        x_T = clock.wrap("invert", model.invert)(crops, identity, z_lnd, steps=steps, batch_size=batch_size).cpu()
        decoded = clock.wrap("decode", model.decode)(x_T, identity, z_lnd, steps=steps, batch_size=batch_size).cpu()
    seconds = {stage: clock.seconds[stage] for stage in CROP_STAGES}
    return {**seconds, "total": sum(seconds.values())}, {"x_T": x_T, "decoded": decoded}


def pixels(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] crops -> uint8 levels as the CLI writes them."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def output_difference(ours: dict, reference: dict) -> dict:
    x_T_rel = float((ours["x_T"].float() - reference["x_T"]).abs().max() / reference["x_T"].abs().max())
    pixel = (pixels(ours["decoded"]).int() - pixels(reference["decoded"]).int()).abs()
    return {"x_T_max_rel": x_T_rel, "decoded_max_levels": int(pixel.max()), "decoded_mean_levels": float(pixel.float().mean())}


def random_model(kind: str, device: str) -> DVAModel:
    unet = UNetConfig() if kind == "full" else tiny_crop_unet_config()
    model = DVAModel(config=DVAConfig(unet=unet))
    randomize_(model, seed=0)
    return model.eval().requires_grad_(False).to(device)


def load_crops(args) -> torch.Tensor:
    """[N, 3, 256, 256] in [-1, 1]: the first ``--frames`` crops of ``--aligned``, or random ones."""
    if args.aligned is None:
        return torch.rand(args.frames or REFERENCE_BATCH, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    from dva_model.formats.image_io import read_crops

    _, crops = read_crops(args.aligned, size=256)
    return crops[: args.frames] if args.frames else crops


def run_crops(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    crops = load_crops(args)
    model_of = (lambda: load_model(args.checkpoint, device=args.device)) if args.checkpoint else (
        lambda: random_model(args.model, args.device))
    models = {"reference": model_of(), "ours": prepare(model_of(), args)}
    batches = {"reference": REFERENCE_BATCH, "ours": args.batch_size}
    roles = ["ours"] if args.no_baseline else list(ROLES)
    flops = unet_flops(models["reference"], crops.shape[-1], args.device)
    compile_s = warm_up(models["ours"], crops, args.batch_size, args.device)
    if "reference" in roles:
        warm_up(models["reference"], crops, REFERENCE_BATCH, args.device)  # allocator / cuDNN, not timed
    runs, outputs = {role: [] for role in roles}, {}
    for _ in range(args.repeat):  # alternated, so a busy machine slows both alike
        for role in roles:
            seconds, outputs[role] = time_crops(models[role], crops, steps=args.steps, batch_size=batches[role],
                                                device=args.device)
            runs[role].append(seconds)
    results = {"device": device_name(args.device), "threads": torch.get_num_threads(), "frames": len(crops),
               "steps": args.steps, "repeats": args.repeat, "unet_gflop_per_frame_forward": flops / 1e9,
               **summarize(runs, frames=len(crops), frame_forwards=len(crops) * (2 * args.steps - 1), flops=flops)}
    results["runs"]["ours"].update(mode=models["ours"].runner.options.describe(), precision=args.precision,
                                   batch_size=args.batch_size, compile_s=compile_s if args.compile or args.cuda_graphs else 0.0)
    if "reference" in roles:
        results["runs"]["reference"].update(mode="eager", precision="fp32", batch_size=REFERENCE_BATCH)
        totals = {role: statistics.median(r["total"] for r in runs[role]) for role in roles}
        results["speedup_with_compile"] = totals["reference"] / (totals["ours"] + results["runs"]["ours"]["compile_s"])
        results["output_difference"] = output_difference(outputs["ours"], outputs["reference"])
    results.update(peak_memory(args.device))  # one process ran both settings: the larger of the two
    print_table(results)
    return results


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(torch.device(device)) if str(device).startswith("cuda") else "cpu"


# ---------------------------------------------------------------------------------------------------
# command line


def add_speed_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32", help="our UNet's precision")
    parser.add_argument("--batch-size", type=int, default=REFERENCE_BATCH, help="our frames per UNet call")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--cuda-graphs", action="store_true")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=1, help="alternated runs of each setting; medians count")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    crops = commands.add_parser("crops", help="encode + invert + decode of aligned (or random) crops")
    crops.add_argument("--checkpoint", type=Path, help="model file (default: random weights of --model)")
    crops.add_argument("--model", choices=("full", "tiny"), default="full", help="random model without --checkpoint")
    crops.add_argument("--aligned", type=Path, help="folder of aligned 256 crops (default: random crops)")
    crops.add_argument("--frames", type=int, default=0, help="use the first N crops (random: N, default 4)")
    crops.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    crops.add_argument("--no-baseline", action="store_true", help="skip the reference setting's runs")
    add_speed_options(crops)
    crops.set_defaults(func=run_crops)
    from benchmark_edit import add_parser as add_edit_parser  # the whole-video stage table

    add_edit_parser(commands, add_speed_options)
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    results = args.func(args)
    print(json.dumps(results, indent=2))  # noqa: T201 - a script's output


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
