"""``convert``: the multi-GB released checkpoint -> a compact .safetensors (EMA weights only)."""

import argparse
import logging
from pathlib import Path

import torch

from dva_model.formats.checkpoint import load_model, save_model
from dva_model.errors import UserError
from dva_model.formats.files import check_writable_file

log = logging.getLogger(__name__)
STORAGE = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert a released .ckpt into a compact .safetensors",
        description="Keep only the EMA weights (and the architecture) of a DVA checkpoint, optionally in "
                    "half precision, in a .safetensors file that loads without unpickling.",
    )
    parser.add_argument("source", type=Path, help="released Lightning .ckpt (or any supported model file)")
    parser.add_argument("output", type=Path, help="the .safetensors file to write")
    parser.add_argument("--dtype", choices=sorted(STORAGE), default="fp32", help="storage precision")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.output.suffix != ".safetensors":
        raise UserError(f"The output {args.output} must end in .safetensors.")
    if args.output.resolve() == args.source.resolve():
        raise UserError("The output must be a new file; the source is never overwritten.")
    check_writable_file(args.output, what="the converted model", make_parents=True)
    model = load_model(args.source)
    save_model(args.output, model, dtype=STORAGE[args.dtype])
    source_mb, output_mb = args.source.stat().st_size / 2**20, args.output.stat().st_size / 2**20
    log.info("wrote %s (%.1f MB, from %.1f MB)", args.output, output_mb, source_mb)
    return 0
