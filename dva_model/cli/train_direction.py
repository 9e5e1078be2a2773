"""``train-direction``: labelled face images -> an attribute direction file for ``decode --attribute``."""

import argparse
import logging
from pathlib import Path

from dva_model.edit.classifier import load_classifier, save_directions
from dva_model.formats.identity_stats import load_identity_statistics
from dva_model.cli.common import add_model_options, load_model_from_args
from dva_model.edit.direction_training import (
    RELEASE_BATCH_SIZE, RELEASE_STEPS, DirectionTrainingConfig, extract_identities, feature_statistics,
    load_features, read_labels, resolve_images, save_features, save_release_classifier, train_directions,
)
from dva_model.constants import CELEBA_ATTRIBUTES
from dva_model.errors import UserError
from dva_model.cli.options import finite_float
from dva_model.formats.files import check_writable_file
from dva_model.cli.progress_bar import terminal_progress

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-direction", help="train attribute directions from labelled face images",
        description="Fit the release's linear attribute classifier (BCE on normalised ArcFace identities) "
                    "to a folder of aligned face images and their labels, and write its directions.",
    )
    add_model_options(parser)
    parser.add_argument("--images", type=Path, required=True, help="folder of aligned face images")
    parser.add_argument("--labels", type=Path, required=True,
                        help="CSV (file column, then one column per attribute; 1/-1 or 1/0, empty = unknown) "
                             "or CelebAMask-HQ-attribute-anno.txt")
    parser.add_argument("--attributes", nargs="+", metavar="NAME", help="train only these columns")
    parser.add_argument("--out", type=Path, required=True, help="direction file to write")
    parser.add_argument("--format", choices=("ours", "release"), default="ours",
                        help="ours: .safetensors with names (any attributes); release: last.ckpt layout "
                             "(CelebA's 40 only)")
    parser.add_argument("--stats", type=Path,
                        help="identity mean/std from latent.pkl or a classifier file (default: the images' own)")
    parser.add_argument("--steps", type=int, default=RELEASE_STEPS, help=f"Adam steps (release: {RELEASE_STEPS})")
    parser.add_argument("--train-batch", type=int, default=RELEASE_BATCH_SIZE, help="identities per Adam step")
    parser.add_argument("--lr", type=finite_float, default=1e-3, help="Adam learning rate (release: 1e-3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-flip", action="store_true", help="no horizontal-flip augmentation")
    parser.add_argument("--features-cache", type=Path,
                        help="reuse (or write) the extracted identities here; saves re-encoding on reruns")
    parser.set_defaults(func=run)


def _statistics(args: argparse.Namespace, features):
    if args.stats is None:
        return feature_statistics(features)
    if args.stats.suffix in (".ckpt", ".safetensors"):
        classifier = load_classifier(args.stats)
        return classifier.mean, classifier.std
    return load_identity_statistics(args.stats)


def _identities(args: argparse.Namespace, files):
    cache = args.features_cache
    if cache is not None and cache.is_file():
        cached_files, features = load_features(cache)
        if cached_files == tuple(files) and features.shape[1] == (1 if args.no_flip else 2):
            log.info("using the identities cached in %s", cache)
            return features
        log.warning("%s was made for other images or flip settings; re-encoding.", cache)
    paths = resolve_images(args.images, files)
    model = load_model_from_args(args)
    log.info("encoding %d images", len(paths))
    features = extract_identities(model, paths, flips=not args.no_flip, batch_size=args.batch_size,
                                  callback=terminal_progress("encode", enabled=not args.quiet))
    if cache is not None:
        save_features(cache, files, features)
    return features


def run(args: argparse.Namespace) -> int:
    check_writable_file(args.out, what="the direction file", make_parents=True)
    table = read_labels(args.labels)
    if args.attributes:
        table = table.select(args.attributes)
    if args.format == "release" and table.attributes != CELEBA_ATTRIBUTES:
        raise UserError("--format release holds CelebA's 40 attributes in their fixed order only; use --format ours.")
    features = _identities(args, table.files)
    mean, std = _statistics(args, features)
    config = DirectionTrainingConfig(steps=args.steps, batch_size=args.train_batch, learning_rate=args.lr,
                                     seed=args.seed)
    trained = train_directions(features, table.labels, attribute_names=table.attributes, mean=mean, std=std,
                               config=config, callback=terminal_progress("train", enabled=not args.quiet))
    if args.format == "release":
        save_release_classifier(args.out, trained)
    else:
        save_directions(args.out, trained.classifier)
    log.info("wrote %d directions (%s) to %s; BCE %.4f -> %.4f", len(table.attributes),
             ", ".join(table.attributes[:5]) + ("..." if len(table.attributes) > 5 else ""), args.out,
             trained.losses[0], trained.losses[-1])
    return 0
