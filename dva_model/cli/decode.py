"""``decode``: a latent file (optionally edited) -> decoded aligned crops as PNG."""

import argparse
import logging
from pathlib import Path

from dva_model.cli.common import add_identity_edit_options, add_model_options, identity_edits_from_args, load_model_from_args
from dva_model.edit.identity import compose_identity_edits
from dva_model.formats.files import file_fingerprint
from dva_model.formats.image_io import write_crops
from dva_model.formats.latent_io import load_latent
from dva_model.cli.progress_bar import terminal_progress

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "decode", help="decode a latent file, optionally with attribute edits",
        description="Decode every frame of a latent file by DDIM from its x_T, with the clip identity "
                    "optionally moved along classifier attribute directions.",
    )
    add_model_options(parser)
    parser.add_argument("--latent", type=Path, required=True, help="latent file written by encode")
    parser.add_argument("--steps", type=int, help="DDIM steps (default: the latent's own step count)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the decoded PNG crops")
    add_identity_edit_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    latent = load_latent(args.latent)
    steps = args.steps or latent.steps
    if steps != latent.steps:
        log.warning("decoding with %d steps a latent inverted with %d; reconstructions will drift.", steps, latent.steps)
    if latent.model_id and latent.model_id != file_fingerprint(args.checkpoint).model_id:
        log.warning("%s was encoded with %s, not %s.", args.latent, latent.model_id, args.checkpoint.name)
    identity = compose_identity_edits(latent.identity, identity_edits_from_args(args).edits())
    model = load_model_from_args(args)
    crops = model.decode(latent.x_T, identity, latent.z_lnd, steps=steps, batch_size=args.batch_size,
                         callback=terminal_progress("decode", enabled=not args.quiet))
    names = latent.frame_names or tuple(f"{i:05d}" for i in range(len(crops)))
    write_crops(args.out, names, crops)
    log.info("wrote %d crops to %s", len(crops), args.out)
    return 0
