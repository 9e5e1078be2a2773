"""``encode``: aligned crops -> per-frame z_id, z_lnd and DDIM-inverted x_T (a latent file)."""

import argparse
import logging
from pathlib import Path

from dva_model.cli.common import add_model_options, load_model_from_args
from dva_model.cli.progress_bar import terminal_progress
from dva_model.encoding import encode_clip
from dva_model.formats.files import file_fingerprint
from dva_model.formats.image_io import read_crops
from dva_model.formats.latent_io import save_latent

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "encode", help="invert aligned face crops into a latent file",
        description="Encode a folder of aligned 256x256 face crops (file-name order): per-frame identity "
                    "and landmark features, and x_T by DDIM inversion with the clip's mean identity.",
    )
    add_model_options(parser)
    parser.add_argument("--aligned", type=Path, required=True, help="folder of aligned crops (PNG/JPG)")
    parser.add_argument("--steps", type=int, default=100, help="DDIM steps (release: 1000; default 100)")
    parser.add_argument("--out", type=Path, required=True, help="latent file to write (.safetensors)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = load_model_from_args(args)
    names, crops = read_crops(args.aligned, size=model.image_size)
    log.info("encoding %d crops from %s", len(crops), args.aligned)
    latent = encode_clip(model, crops, steps=args.steps, batch_size=args.batch_size,
                         model_id=file_fingerprint(args.checkpoint).model_id, frame_names=names,
                         stage_progress=lambda stage: terminal_progress(stage, enabled=not args.quiet))
    save_latent(args.out, latent)
    log.info("wrote %s", args.out)
    return 0
