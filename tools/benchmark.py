"""Speed of the DVA UNet paths: frames/s for encode, invert and decode, against an eager baseline.

    python tools/benchmark.py --model full --frames 4 --steps 2 --device cuda --precision bf16 --batch-size 16
    python tools/benchmark.py --checkpoint models/dva/dva.safetensors --frames 32 --steps 20 --device cuda

Random weights unless --checkpoint is given (speed does not depend on the values). The baseline is the
release's setting: eager fp32, 4 frames per UNet call, in the same process on the same device.
A forward of the full-size UNet is ~771 GFLOP per 256x256 frame, so on a CPU use --frames 1 --steps 2.
"""

import argparse
import dataclasses
import json
import time

import torch

from dva_model.formats.checkpoint import load_model
from dva_model.constants import PRECISIONS
from dva_model.model import DVAConfig, DVAModel, mean_identity
from dva_model.testing import randomize_, tiny_unet_config
from dva_model.nets.unet import UNetConfig

UNET_GFLOP_PER_FRAME = 771.0  # full-size UNet at 256 x 256 (reference section 11)


def _model(args) -> DVAModel:
    if args.checkpoint:
        return load_model(args.checkpoint, device=args.device, dtype=torch.float32)
    unet = UNetConfig() if args.model == "full" else dataclasses.replace(
        tiny_unet_config(), image_size=256, model_channels=8, channel_mult=(1, 1, 2, 2), attention_resolutions=(32,))
    model = DVAModel(config=DVAConfig(unet=unet))
    randomize_(model, seed=0)
    return model.eval().requires_grad_(False).to(args.device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(device, fn):
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


def run_paths(model: DVAModel, crops, *, steps: int, batch_size: int, device: str) -> dict:
    """Seconds for encode, invert and decode of ``crops`` with the model as it is configured."""
    (z_id, z_lnd), t_encode = _timed(device, lambda: model.encode_features(crops, batch_size=batch_size))
    identity = mean_identity(z_id)
    x_T, t_invert = _timed(device, lambda: model.invert(crops, identity, z_lnd, steps=steps, batch_size=batch_size))
    _, t_decode = _timed(device, lambda: model.decode(x_T, identity, z_lnd, steps=steps, batch_size=batch_size))
    return {"encode_s": t_encode, "invert_s": t_invert, "decode_s": t_decode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a real model file; default: random weights")
    parser.add_argument("--model", choices=("full", "tiny"), default="full", help="random model size")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="bf16")
    parser.add_argument("--channels-last", action="store_true", help="UNet in channels_last memory format")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-baseline", action="store_true", help="skip the eager fp32 batch-of-4 run")
    args = parser.parse_args()

    model = _model(args)
    crops = torch.rand(args.frames, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    results = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
               "frames": args.frames, "steps": args.steps, "unet": dataclasses.asdict(model.config.unet)}
    run_paths(model, crops[:1], steps=2, batch_size=1, device=args.device)  # warm-up (cuDNN autotune, allocator)
    if not args.no_baseline:
        results["baseline_fp32_batch4"] = run_paths(model, crops, steps=args.steps, batch_size=4, device=args.device)
    model.unet.to(PRECISIONS[args.precision])
    if args.channels_last:
        model.unet.to(memory_format=torch.channels_last)
    timed = run_paths(model, crops, steps=args.steps, batch_size=args.batch_size, device=args.device)
    results[f"{args.precision}_batch{args.batch_size}"] = timed
    for name, value in list(results.items()):
        if isinstance(value, dict) and "decode_s" in value:
            calls = args.frames * args.steps
            value["decode_frames_per_s"] = args.frames / value["decode_s"]
            value["unet_ms_per_frame_forward"] = 1000 * value["decode_s"] / calls
            if model.config.unet == UNetConfig():
                value["tflop_per_s"] = UNET_GFLOP_PER_FRAME * calls / value["decode_s"] / 1000
    if "baseline_fp32_batch4" in results:
        results["decode_speedup_vs_baseline"] = results["baseline_fp32_batch4"]["decode_s"] / timed["decode_s"]
    print(json.dumps(results, indent=2))  # noqa: T201 - a script's output


if __name__ == "__main__":
    main()
