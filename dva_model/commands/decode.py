"""``decode``: a latent file (optionally edited) -> decoded aligned crops as PNG."""

import argparse
import logging
from pathlib import Path

from dva_model.classifier import edit_identity, load_classifier, parse_edit
from dva_model.commands.common import add_model_options, load_model_from_args, model_fingerprint
from dva_model.errors import UserError
from dva_model.image_io import write_crops
from dva_model.latent_io import load_latent
from dva_model.progress_bar import terminal_progress

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
    parser.add_argument("--attribute", action="append", default=[], metavar="NAME:SCALE",
                        help="attribute edit, e.g. Mustache:0.25 (repeatable; CelebA names)")
    parser.add_argument("--classifier", type=Path, help="attribute classifier (release last.ckpt or directions)")
    parser.add_argument("--latent-stats", type=Path, help="release latent.pkl, if the classifier lacks mean/std")
    parser.add_argument("--edit-norm", choices=("keep", "unit"), default="keep",
                        help="keep: edited identity keeps the clip identity's norm (scale 0 = no change); "
                             "unit: the release's unit-length identity")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    latent = load_latent(args.latent)
    steps = args.steps or latent.steps
    if steps != latent.steps:
        log.warning("decoding with %d steps a latent inverted with %d; reconstructions will drift.", steps, latent.steps)
    if latent.model_id and latent.model_id != model_fingerprint(args.checkpoint):
        log.warning("%s was encoded with %s, not %s.", args.latent, latent.model_id, args.checkpoint.name)
    identity = latent.identity
    if args.attribute:
        if args.classifier is None:
            raise UserError("--attribute needs --classifier (the released diffusion_video_autoencoder_cls/last.ckpt).")
        classifier = load_classifier(args.classifier, latent_stats=args.latent_stats)
        identity = edit_identity(identity, classifier, [parse_edit(a) for a in args.attribute], norm=args.edit_norm)
    model = load_model_from_args(args)
    crops = model.decode(latent.x_T, identity, latent.z_lnd, steps=steps, batch_size=args.batch_size,
                         callback=terminal_progress("decode", enabled=not args.quiet))
    names = latent.frame_names or tuple(f"{i:05d}" for i in range(len(crops)))
    write_crops(args.out, names, crops)
    log.info("wrote %d crops to %s", len(crops), args.out)
    return 0
