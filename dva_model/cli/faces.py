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


def _scoped(args: argparse.Namespace) -> dict:
    """{"attribute": [(edit, label or None), ...], "delta": [...]} from the command line."""
    return {option: [split_scope(text) for text in getattr(args, option, [])] for option in ("attribute", "delta")}


def _plain(args: argparse.Namespace, scoped: dict) -> argparse.Namespace:
    plain = copy.copy(args)
    for option, pairs in scoped.items():
        setattr(plain, option, [body for body, _ in pairs])
    return plain


def without_scopes(args: argparse.Namespace) -> argparse.Namespace:
    """A copy of ``args`` with every edit's @LABEL taken off (to check and load them all once); refuses
    scoped edits when no face is chosen."""
    scoped = _scoped(args)
    labels = [label for pairs in scoped.values() for _, label in pairs if label is not None]
    if labels and getattr(args, "faces", None) is None and not getattr(args, "face_reference", ()):
        raise UserError(f"An edit for face @{labels[0]} needs --faces or --face-reference to choose the faces.")
    return _plain(args, scoped)


def edits_per_face(args: argparse.Namespace, labels: Sequence[str]) -> dict[str, IdentityEditOptions]:
    """Each chosen face's identity edits: every unscoped --attribute/--delta, plus those ending in its @LABEL.

    Loads the classifier and the deltas once and checks every edit (``identity_edits_from_args``);
    refuses a label that is no chosen face.
    """
    scoped = _scoped(args)
    unknown = sorted({label for pairs in scoped.values() for _, label in pairs if label is not None} - set(labels))
    if unknown:
        raise UserError(f"Edit for face @{unknown[0]}, which is not a chosen face; the chosen faces are "
                        f"{one_of(labels)}.")
    loaded = identity_edits_from_args(_plain(args, scoped))  # loaded in the options' order
    out = {}
    for label in labels:
        def mine(pairs):
            return [i for i, (_, scope) in enumerate(pairs) if scope in (None, label)]

        out[label] = IdentityEditOptions(
            deltas=tuple(loaded.deltas[i] for i in mine(scoped["delta"])),
            attributes=tuple(loaded.attributes[i] for i in mine(scoped["attribute"])),
            classifier=loaded.classifier, norm=loaded.norm)
    return out


def people_from_args(args: argparse.Namespace, selection, *, device: str = "cpu", progress=None,
                     write_preview: bool = True):
    """Track every face when --faces, --face-reference or --preview-tracks asks for it: returns the video's
    info, the frame indices and the chosen faces (None when only the preview was asked for); None when
    none of those options is given (the single-face tracker runs). ``write_preview`` False: track, but
    leave the preview file to another process (torchrun's first)."""
    from dva_model.cli.align import landmarker_from_args
    from dva_model.face.multitrack import MultiTrackConfig
    from dva_model.face.recognition import DlibRecogniser
    from dva_model.people import choose_faces, track_people_in_video, write_track_preview

    choice = face_choice_from_args(args)
    if choice is None and args.preview_tracks is None:
        return None
    if args.detect_every != 1:
        raise UserError("--detect-every follows one face; leave it at 1 with --faces, --face-reference or "
                        "--preview-tracks.")
    if args.preview_tracks is not None:
        from dva_model.formats.files import check_writable_file

        if args.preview_tracks.suffix.lower() != ".mp4":
            raise UserError(f"--preview-tracks {args.preview_tracks} must end in .mp4 (the preview is an H.264 MP4).")
        check_writable_file(args.preview_tracks, what="the track preview")
    landmarker = landmarker_from_args(args, device=device)
    recogniser = DlibRecogniser(models_dir=args.face_models)
    stage = progress or (lambda _name: None)
    info, indices, people = track_people_in_video(
        args.video, landmarker, recogniser=recogniser, selection=selection, order=args.face_order,
        config=MultiTrackConfig(max_gap=args.max_gap), callback=stage("faces"))
    if args.preview_tracks is not None and write_preview:
        write_track_preview(args.video, args.preview_tracks, people, selection=selection, callback=stage("preview"))
    chosen = None if choice is None else choose_faces(people, choice, landmarker=landmarker, recogniser=recogniser)
    return info, indices, chosen
