"""Options for choosing whose faces ``align`` and ``edit`` work on, and edits scoped to one face.

--faces 0,2 / all (track numbers, see --preview-tracks), --face-reference PHOTO (repeatable: the person
in the photo), --face-order, --preview-tracks FILE.mp4. Without --faces or --face-reference the
single-face tracker runs as before (the largest face, then the nearest). An edit ending in ``@LABEL``
(a track number, or a reference photo's file stem) applies to that face only; other edits to every
chosen face.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Optional, Sequence

from dva_model.cli.common import IdentityEditOptions, identity_edits_from_args
from dva_model.errors import UserError, one_of
from dva_model.face.multitrack import FACE_ORDERS, parse_face_ids
from dva_model.people import FaceChoice, read_reference


def add_face_choice_options(parser: argparse.ArgumentParser, *, scoped_edits: bool = False) -> None:
    """--faces, --face-reference, --face-order, --preview-tracks."""
    scope = (" Edits ending in @LABEL (a track number or a reference photo's file stem, e.g. Smiling:1@0 or "
             "Smiling:1@alice) apply to that face only; the others to every chosen face.") if scoped_edits else ""
    parser.add_argument("--faces", metavar="IDS",
                        help="track every face and work on these: track numbers in --face-order, e.g. 0 or 0,2, or "
                             "'all' (see --preview-tracks for the numbers); overlapping faces are pasted in this "
                             "order, the last on top." + scope)
    parser.add_argument("--face-reference", action="append", default=[], type=Path, metavar="PHOTO",
                        help="track every face and work on the person in this photo (nearest identity, dlib's face "
                             "recogniser; repeatable, pasted after --faces in the order given)")
    parser.add_argument("--face-order", choices=FACE_ORDERS, default=FACE_ORDERS[0],
                        help="how tracks are numbered: largest face first (default) or left to right")
    parser.add_argument("--preview-tracks", type=Path, metavar="FILE.mp4",
                        help="also write the frames with every face track's box and number drawn, to choose --faces")


def face_choice_from_args(args: argparse.Namespace) -> Optional[FaceChoice]:
    """The --faces / --face-reference choice, or None for the single-face tracker (neither given)."""
    if args.faces is None and not args.face_reference:
        return None
    ids = parse_face_ids(args.faces) if args.faces is not None else None
    if args.faces is not None and ids is None and args.face_reference:
        raise UserError("--faces all already chooses every face; leave out --face-reference.")
    references = tuple(read_reference(path) for path in args.face_reference)
    return FaceChoice(ids=ids, references=references, order=args.face_order)


def split_scope(text: str) -> tuple[str, Optional[str]]:
    """"Smiling:1@alice" -> ("Smiling:1", "alice"); no "@" -> (text, None)."""
    body, sep, label = text.rpartition("@")
    if not sep or "/" in label or "\\" in label:  # an "@" inside a file's path, not a scope
        return text, None
    if not body or not label:
        raise UserError(f"{text!r}: an edit for one face is EDIT@LABEL, e.g. Smiling:1@0.")
    return body, label


def edits_per_face(args: argparse.Namespace, labels: Sequence[str]) -> dict[str, IdentityEditOptions]:
    """Each chosen face's identity edits: every unscoped --attribute/--delta, plus those ending in its @LABEL.

    Loads the classifier and the deltas once and checks every edit (``identity_edits_from_args``);
    refuses a label that is no chosen face.
    """
    scoped = {option: [split_scope(text) for text in getattr(args, option, [])] for option in ("attribute", "delta")}
    unknown = sorted({label for pairs in scoped.values() for _, label in pairs if label is not None} - set(labels))
    if unknown:
        raise UserError(f"Edit for face @{unknown[0]}, which is not a chosen face; the chosen faces are "
                        f"{one_of(labels)}.")
    plain = copy.copy(args)
    plain.attribute = [body for body, _ in scoped["attribute"]]
    plain.delta = [body for body, _ in scoped["delta"]]
    loaded = identity_edits_from_args(plain)  # loaded in the options' order
    out = {}
    for label in labels:
        def mine(pairs):
            return [i for i, (_, scope) in enumerate(pairs) if scope in (None, label)]

        out[label] = IdentityEditOptions(
            deltas=tuple(loaded.deltas[i] for i in mine(scoped["delta"])),
            attributes=tuple(loaded.attributes[i] for i in mine(scoped["attribute"])),
            classifier=loaded.classifier, norm=loaded.norm)
    return out
