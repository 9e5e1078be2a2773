"""Options and helpers shared by the model-using CLI commands."""

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import Tensor

from dva_model.formats.checkpoint import EncoderFiles, load_model
from dva_model.edit.classifier import AttributeClassifier
from dva_model.edit.identity import DEFAULT_SCALE, NORMS, IdentityEdit, identity_edits
from dva_model.errors import UserError
from dva_model.constants import PRECISIONS
from dva_model.model import DVAModel
from dva_model.cli.options import non_negative_int
from dva_model.stages import auto_batch_size


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="DVA model: the released .ckpt or a converted .safetensors")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32",
                        help="UNet precision (GroupNorm stays fp32; encoders always fp32)")
    parser.add_argument("--batch-size", type=non_negative_int, default=0,
                        help="frames per network call (default 0: from the GPU's free memory; 8 on the CPU)")
    parser.add_argument("--channels-last", action="store_true",
                        help="run the UNet in channels-last memory order (faster convolutions on most devices)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the UNet (minutes of compiling on the first batch, then faster)")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="CUDA only: compile the UNet into CUDA graphs (implies --compile)")
    add_encoder_options(parser)


def add_encoder_options(parser, *, optional: bool = True) -> None:
    """--id-weights / --landmark-weights / --parser-weights: the released frozen encoders' own files
    (``optional``: over the checkpoint's copies; else needed when no checkpoint supplies them)."""
    released = "optional released" if optional else "released"
    parser.add_argument("--id-weights", type=Path, help=f"{released} model_ir_se50.pth")
    parser.add_argument("--landmark-weights", type=Path,
                        help=f"{released} mobilenet_224_model_best_gdconv_external.pth.tar")
    parser.add_argument("--parser-weights", type=Path, help=f"{released} 79999_iter.pth")


def encoder_files_from_args(args: argparse.Namespace) -> Optional[EncoderFiles]:
    """The encoder files given by ``add_encoder_options``' options, or None when none was given."""
    if not (args.id_weights or args.landmark_weights or args.parser_weights):
        return None
    return EncoderFiles(identity=args.id_weights, landmarks=args.landmark_weights, parser=args.parser_weights)


def load_model_from_args(args: argparse.Namespace) -> DVAModel:
    files = encoder_files_from_args(args)
    model = load_model(args.checkpoint, device=args.device, dtype=PRECISIONS[args.precision], encoder_files=files)
    if args.batch_size == 0:  # resolved once here, so every command sees a real batch size
        args.batch_size = auto_batch_size(args.device, model.image_size)
    return model.prepare(channels_last=args.channels_last, compile=args.compile, cuda_graphs=args.cuda_graphs)


def add_attribute_options(parser: argparse.ArgumentParser, *, after: str = "") -> None:
    """--attribute / --classifier / --latent-stats / --edit-norm (``after``: what the attributes follow)."""
    parser.add_argument("--attribute", action="append", default=[], metavar="NAME:SCALE",
                        help=f"attribute edit{after}, e.g. Mustache:0.25 (repeatable; CelebA names; needs --classifier)")
    parser.add_argument("--classifier", type=Path, help="attribute classifier (release last.ckpt or directions)")
    parser.add_argument("--latent-stats", type=Path, help="release latent.pkl, if the classifier lacks mean/std")
    parser.add_argument("--edit-norm", choices=NORMS, default="keep",
                        help="keep: the edited identity keeps the clip identity's norm (scale 0 = no change); "
                             "unit: the release's unit-length identity")


def add_identity_edit_options(parser: argparse.ArgumentParser) -> None:
    """The attribute options and --delta, shared by decode and edit."""
    add_attribute_options(parser)
    parser.add_argument("--delta", action="append", default=[], metavar="FILE[:SCALE]",
                        help="identity delta from clip-edit, applied before attribute edits "
                             f"(repeatable; scale defaults to the published {DEFAULT_SCALE})")


@dataclass(frozen=True)
class IdentityEditOptions:
    """The identity edits a command line asks for, loaded: deltas first, then attributes."""

    deltas: Tuple[Tuple[Tensor, float], ...]
    attributes: Tuple[Tuple[str, float], ...]
    classifier: Optional[AttributeClassifier]
    norm: str

    def __post_init__(self) -> None:
        self.edits()  # attribute edits without a classifier are refused here, before any model loads

    def edits(self) -> Tuple[IdentityEdit, ...]:
        """The edit sequence ``compose_identity_edits`` applies."""
        return identity_edits(deltas=self.deltas, attributes=self.attributes, classifier=self.classifier,
                              norm=self.norm)


def identity_edits_from_args(args: argparse.Namespace) -> IdentityEditOptions:
    """Parse and load --delta / --attribute (+ --classifier); one-sentence errors for bad values.

    Commands without --delta get none.
    """
    from dva_model.edit.classifier import load_classifier, parse_edit

    attributes = tuple(parse_edit(text) for text in args.attribute)
    wanted = attributes and args.classifier is not None
    classifier = load_classifier(args.classifier, latent_stats=args.latent_stats) if wanted else None
    if classifier is not None:
        try:  # names and finite directions, before any alignment or model load
            classifier.check_edits(attributes)
        except UserError as error:
            raise UserError(f"{args.classifier}: {error}") from None
    deltas = tuple(_load_delta_option(text) for text in getattr(args, "delta", ()))
    return IdentityEditOptions(deltas=deltas, attributes=attributes, classifier=classifier, norm=args.edit_norm)


def _load_delta_option(text: str) -> Tuple[Tensor, float]:
    from dva_model.edit.clip_edit import load_delta

    path, sep, scale = text.rpartition(":")
    if not sep:
        return load_delta(Path(text)).delta, DEFAULT_SCALE
    try:
        value = float(scale)
        if not math.isfinite(value):
            raise UserError(f"--delta {text!r}: the scale {scale} is not a finite number; use e.g. 0.5.")
        return load_delta(Path(path)).delta, value
    except UserError:
        raise
    except ValueError:
        if Path(text).is_file():  # a colon inside the file name, no scale
            return load_delta(Path(text)).delta, DEFAULT_SCALE
        raise UserError(f"--delta {text!r} is not FILE or FILE:SCALE (for example beard.safetensors:0.5).") from None
