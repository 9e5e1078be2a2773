"""Options and helpers shared by the model-using CLI commands."""

import argparse
from pathlib import Path

import torch

from dva_model.checkpoint import EncoderFiles, load_model
from dva_model.model import DVAModel

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="DVA model: the released .ckpt or a converted .safetensors")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32",
                        help="UNet precision (GroupNorm stays fp32; encoders always fp32)")
    parser.add_argument("--batch-size", type=int, default=8, help="frames per UNet call")
    parser.add_argument("--id-weights", type=Path, help="optional released model_ir_se50.pth")
    parser.add_argument("--landmark-weights", type=Path,
                        help="optional released mobilenet_224_model_best_gdconv_external.pth.tar")
    parser.add_argument("--parser-weights", type=Path, help="optional released 79999_iter.pth")


def load_model_from_args(args: argparse.Namespace) -> DVAModel:
    files = None
    if args.id_weights or args.landmark_weights or args.parser_weights:
        files = EncoderFiles(identity=args.id_weights, landmarks=args.landmark_weights, parser=args.parser_weights)
    return load_model(args.checkpoint, device=args.device, dtype=PRECISIONS[args.precision], encoder_files=files)


def model_fingerprint(path: Path) -> str:
    """A cheap identity of a model file (name and size) recorded in latents to catch mix-ups."""
    path = Path(path)
    return f"{path.name}:{path.stat().st_size}"
