"""Speed of DVA editing: our fast settings against the reference's setting, with the output difference.

    # the parity setup: a checkpoint and a folder of aligned crops; encode + invert + decode, side by side
    python tools/benchmark.py crops --checkpoint CKPT --aligned DIR --steps 10 --compile --channels-last
    # a whole video edit, seconds per frame for every stage
    python tools/benchmark.py edit --checkpoint CKPT --video clip.mp4 --steps 100 --compile --channels-last
    # UNet speed only (random weights of the full-size model unless --checkpoint)
    python tools/benchmark.py unet --model full --frames 4 --steps 2 --precision bf16 --batch-size 16

Every command runs "ours" (the options given) and "reference" (the release's setting: eager fp32,
4 frames per UNet call) on the same inputs and device, prints a table and a JSON document, and reports
how far our output is from the reference setting's (x_T relative, decoded pixels in 1/255). UNet
TFLOP/s counts the FLOPs of one forward with torch.utils.flop_counter (convolutions and matrix
products). Compiling happens before the timed run and is reported apart ("compile_s").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from pathlib import Path

import torch

from dva_model.formats.checkpoint import load_model
from dva_model.constants import PRECISIONS
from dva_model.model import DVAConfig, DVAModel, mean_identity
from dva_model.nets.unet import UNetConfig
from dva_model.testing import randomize_, tiny_unet_config

REFERENCE_BATCH = 4  # the release's --batch_size


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


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
    start = time.perf_counter()
    for size in sorted(sizes):
        x = crops[:size].to(device)
        model.runner(x.to(next(model.unet.parameters()).dtype), torch.zeros(size, dtype=torch.long, device=device),
                     torch.zeros(size, 512, device=device, dtype=next(model.unet.parameters()).dtype))
    sync(device)
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------------
# crops: the parity setup


def time_crops(model: DVAModel, crops: torch.Tensor, *, steps: int, batch_size: int, device: str) -> dict:
    """Seconds of encode, invert and decode of ``crops``; returns timings and the outputs."""
    out, times = {}, {}

    def timed(name, fn):
        sync(device)
        start = time.perf_counter()
        value = fn()
        sync(device)
        times[name] = time.perf_counter() - start
        return value

    with torch.no_grad():
        z_id, z_lnd = timed("encode", lambda: model.encode_features(crops, batch_size=batch_size))
        identity = mean_identity(z_id)
        out["x_T"] = timed("invert", lambda: model.invert(crops, identity, z_lnd, steps=steps,
                                                          batch_size=batch_size)).cpu()
        out["decoded"] = timed("decode", lambda: model.decode(out["x_T"], identity, z_lnd, steps=steps,
                                                              batch_size=batch_size)).cpu()
    calls = len(crops) * (2 * steps - 1)  # frame-forwards of the inversion and the decoding
    times["unet_ms_per_frame_forward"] = 1000 * (times["invert"] + times["decode"]) / calls
    times["total"] = times["encode"] + times["invert"] + times["decode"]
    return {"seconds": times, "outputs": out}


def pixels(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] crops -> uint8 levels as the CLI writes them."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def output_difference(ours: dict, reference: dict) -> dict:
    x_T_rel = float((ours["x_T"] - reference["x_T"]).abs().max() / reference["x_T"].abs().max())
    pixel = (pixels(ours["decoded"]).int() - pixels(reference["decoded"]).int()).abs()
    return {"x_T_max_rel": x_T_rel, "decoded_max_levels": int(pixel.max()), "decoded_mean_levels": float(pixel.float().mean())}


def run_crops(args) -> dict:
    from dva_model.formats.image_io import read_crops

    torch.set_num_threads(args.threads or torch.get_num_threads())
    _, crops = read_crops(args.aligned, size=256)
    crops = crops[: args.frames] if args.frames else crops
    reference_model = load_model(args.checkpoint, device=args.device)
    flops = unet_flops(reference_model, crops.shape[-1], args.device)
    results = {"device": device_name(args.device), "threads": torch.get_num_threads(), "frames": len(crops),
               "steps": args.steps, "unet_gflop_per_frame_forward": flops / 1e9, "runs": {}}
    ours_model = prepare(load_model(args.checkpoint, device=args.device), args)
    compile_s = warm_up(ours_model, crops, args.batch_size, args.device)
    warm_up(reference_model, crops, REFERENCE_BATCH, args.device)
    runs = {"reference": [], "ours": []}
    for _ in range(args.repeat):  # interleaved, so a busy machine slows both alike
        runs["reference"].append(time_crops(reference_model, crops, steps=args.steps, batch_size=REFERENCE_BATCH,
                                            device=args.device))
        runs["ours"].append(time_crops(ours_model, crops, steps=args.steps, batch_size=args.batch_size,
                                       device=args.device))
    for name, repeats in runs.items():
        best = min(repeats, key=lambda r: r["seconds"]["total"])
        seconds = best["seconds"]
        results["runs"][name] = {**{k: round(v, 3) for k, v in seconds.items()},
                                 "tflop_per_s": flops / seconds["unet_ms_per_frame_forward"] / 1e9,
                                 "all_totals": [round(r["seconds"]["total"], 2) for r in repeats]}
    results["runs"]["ours"].update(mode=ours_model.runner.options.describe(), precision=args.precision,
                                   batch_size=args.batch_size, compile_s=round(compile_s, 1))
    results["runs"]["reference"].update(mode="eager", precision="fp32", batch_size=REFERENCE_BATCH)
    results["speedup_total"] = results["runs"]["reference"]["total"] / results["runs"]["ours"]["total"]
    results["speedup_unet"] = (results["runs"]["reference"]["unet_ms_per_frame_forward"]
                               / results["runs"]["ours"]["unet_ms_per_frame_forward"])
    results["output_difference"] = output_difference(runs["ours"][0]["outputs"], runs["reference"][0]["outputs"])
    results.update(peak_memory(args.device))
    return results


# ---------------------------------------------------------------------------------------------------
# unet: random weights, no files needed


def random_model(kind: str, device: str) -> DVAModel:
    unet = UNetConfig() if kind == "full" else dataclasses.replace(
        tiny_unet_config(), image_size=256, model_channels=8, channel_mult=(1, 1, 2, 2), attention_resolutions=(32,))
    model = DVAModel(config=DVAConfig(unet=unet))
    randomize_(model, seed=0)
    return model.eval().requires_grad_(False).to(device)


def run_unet(args) -> dict:
    model_of = (lambda: load_model(args.checkpoint, device=args.device)) if args.checkpoint else (
        lambda: random_model(args.model, args.device))
    crops = torch.rand(args.frames, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    reference_model, ours_model = model_of(), prepare(model_of(), args)
    flops = unet_flops(reference_model, 256, args.device)
    compile_s = warm_up(ours_model, crops, args.batch_size, args.device)
    warm_up(reference_model, crops, REFERENCE_BATCH, args.device)
    results = {"device": device_name(args.device), "frames": args.frames, "steps": args.steps,
               "unet_gflop_per_frame_forward": flops / 1e9, "runs": {}}
    pairs = [("ours", ours_model, args.batch_size)]
    if not args.no_baseline:
        pairs.insert(0, ("reference", reference_model, REFERENCE_BATCH))
    outputs = {}
    for name, model, batch in pairs:
        timed = time_crops(model, crops, steps=args.steps, batch_size=batch, device=args.device)
        outputs[name] = timed["outputs"]
        results["runs"][name] = {**{k: round(v, 4) for k, v in timed["seconds"].items()}, "batch_size": batch,
                                 "tflop_per_s": flops / timed["seconds"]["unet_ms_per_frame_forward"] / 1e9}
    results["runs"]["ours"].update(mode=ours_model.runner.options.describe(), precision=args.precision,
                                   compile_s=round(compile_s, 1))
    if "reference" in outputs:
        results["speedup_unet"] = (results["runs"]["reference"]["unet_ms_per_frame_forward"]
                                   / results["runs"]["ours"]["unet_ms_per_frame_forward"])
        results["output_difference"] = output_difference(outputs["ours"], outputs["reference"])
    results.update(peak_memory(args.device))
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    crops = commands.add_parser("crops", help="the parity setup: encode + invert + decode of aligned crops")
    crops.add_argument("--checkpoint", type=Path, required=True)
    crops.add_argument("--aligned", type=Path, required=True, help="folder of aligned 256 crops")
    crops.add_argument("--frames", type=int, default=0, help="use the first N crops (default all)")
    crops.add_argument("--repeat", type=int, default=1, help="interleaved repeats; the fastest counts")
    crops.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    add_speed_options(crops)
    crops.set_defaults(func=run_crops)
    unet = commands.add_parser("unet", help="UNet speed on random weights (or --checkpoint)")
    unet.add_argument("--checkpoint", type=Path)
    unet.add_argument("--model", choices=("full", "tiny"), default="full")
    unet.add_argument("--frames", type=int, default=4)
    unet.add_argument("--no-baseline", action="store_true", help="skip the reference setting's run")
    add_speed_options(unet)
    unet.set_defaults(func=run_unet)
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
