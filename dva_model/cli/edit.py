"""``edit``: the whole pipeline on a video (align, encode, edit, decode, paste back, write with audio)."""

import argparse
import logging
from pathlib import Path

from dva_model.face.align import AlignConfig
from dva_model.cli.align import add_face_options, add_video_options, landmarker_from_args, selection_from_args
from dva_model.cli.faces import add_face_choice_options, people_from_args, without_scopes
from dva_model.cli.common import (add_identity_edit_options, add_model_options, identity_edits_from_args,
                                  load_model_from_args)
from dva_model.cli.options import crf_value, ddim_steps, non_negative_float, non_negative_int
from dva_model.distributed import Workers, close
from dva_model.errors import UserError
from dva_model.formats.files import file_fingerprint
from dva_model.face.tracking import TrackConfig
from dva_model.face.paste import COMPOSITES, MASK_PRESETS, PasteConfig
from dva_model.pipeline import DEFAULT_STEPS, EditConfig, check_output_path, edit_tracked, track_video
from dva_model.cli.progress_bar import terminal_progress
from dva_model.formats.video import DEFAULT_CRF

log = logging.getLogger(__name__)

OUTPUT_SUFFIXES = (".mp4", ".m4v", ".mov")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "edit", help="edit the face in a video and write the result as MP4",
        description="Align every frame, encode the clip, move its identity along attribute directions, "
                    "decode, paste the faces back into the full frames and write an MP4 with the audio.",
    )
    add_model_options(parser)
    add_video_options(parser)
    parser.add_argument("--out", type=Path, required=True, help="output video (.mp4)")
    add_identity_edit_options(parser)  # none given = reconstruction
    parser.add_argument("--steps", type=ddim_steps, default=DEFAULT_STEPS,
                        help=f"DDIM steps for inversion and decoding (release: 1000; default {DEFAULT_STEPS})")
    add_face_options(parser)
    add_face_choice_options(parser, scoped_edits=True)
    parser.add_argument("--mask", choices=sorted(MASK_PRESETS), default="release",
                        help="parsing classes pasted back: release (face without hair, ears, neck), hair, "
                             "glasses, beard, head")
    parser.add_argument("--mask-union", action="store_true", help="also paste what the edited crop's parsing adds")
    parser.add_argument("--dilate", type=non_negative_int, default=0, help="grow the mask by N crop pixels")
    parser.add_argument("--feather", type=non_negative_float, default=0.0, help="soften the mask edge (Gaussian sigma, crop pixels)")
    parser.add_argument("--mask-temporal", type=non_negative_float, default=0.0, help="smooth the mask over time (sigma, frames)")
    parser.add_argument("--composite", choices=COMPOSITES, default=COMPOSITES[0],
                        help="frame: blend at full resolution (only masked pixels change); release: paste the whole square")
    parser.add_argument("--lossless", action="store_true", help="exact RGB output (libx264rgb, large files)")
    parser.add_argument("--crf", type=crf_value, default=DEFAULT_CRF,
                        help=f"x264 quality, 0 (lossless) to 51 (worst) (default {DEFAULT_CRF})")
    parser.add_argument("--save-latent", type=Path,
                        help="keep the clip's encoding (crops, z_id, z_lnd, x_T) in this .safetensors file "
                             "(default: a temporary file beside --out, removed at the end)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UserError(f"--out {args.out} must end in .mp4 (the output is an H.264 MP4).")
    edits = identity_edits_from_args(without_scopes(args))  # every edit checked before any work
    paste = PasteConfig.from_preset(args.mask, union_edited=args.mask_union, dilate=args.dilate,
                                    feather=args.feather, temporal_sigma=args.mask_temporal, composite=args.composite)
    config = EditConfig(steps=args.steps, edits=edits.attributes, deltas=edits.deltas, edit_norm=args.edit_norm,
                        batch_size=args.batch_size, paste=paste, lossless=args.lossless, crf=args.crf)
    check_output_path(args.video, args.out)
    selection = selection_from_args(args)
    # Under torchrun every process runs this command: each takes its own device and share of the
    # frames; the first one draws the bars and writes the files (dva_model.distributed).
    workers, args.device = Workers.from_environment(args.device)
    try:
        return _edit(args, edits, config, selection, workers)
    finally:
        close(workers)


def _edit(args: argparse.Namespace, edits, config: EditConfig, selection, workers: Workers) -> int:
    progress = (lambda stage: terminal_progress(stage, enabled=not args.quiet and workers.is_root))
    # Faces first: a video without a face fails before the (large) model is loaded.
    people = people_from_args(args, selection, device=args.device, progress=progress, write_preview=workers.is_root)
    if people is not None and people[2] is not None:
        return _edit_people(args, people, config, selection, progress, workers)
    faces = track_video(args.video, landmarker_from_args(args, device=args.device), selection=selection,
                        align=AlignConfig(method=args.align_method), track=TrackConfig(max_gap=args.max_gap),
                        chunk_size=config.chunk_frames, callback=progress("faces"))
    model = load_model_from_args(args)
    result = edit_tracked(faces, args.video, args.out, model, classifier=edits.classifier, config=config,
                          selection=selection, latent_path=args.save_latent,
                          model_id=file_fingerprint(args.checkpoint).model_id, stage_progress=progress,
                          workers=workers)
    return _report(result, workers, no_face="no face", edited="edited")


def _edit_people(args: argparse.Namespace, people, config: EditConfig, selection, progress, workers: Workers) -> int:
    """--faces / --face-reference: every chosen face with its own edits (unscoped ones and its @LABEL ones)."""
    from dva_model.cli.faces import edits_per_face
    from dva_model.edit.identity import compose_identity_edits
    from dva_model.people import faces_of
    from dva_model.pipeline import FaceEdit, edit_faces

    info, indices, chosen = people
    labels = [face.label for face in chosen]
    edits = edits_per_face(args, labels)
    if args.save_latent is not None and len(chosen) > 1:
        raise UserError("--save-latent keeps one face's encoding; leave it out when editing several faces.")
    jobs = []
    align = AlignConfig(method=args.align_method)
    for label, faces in zip(labels, faces_of(info, indices, [face.person for face in chosen], align)):
        steps = edits[label].edits()
        jobs.append(FaceEdit(faces, lambda identity, steps=steps: compose_identity_edits(identity, steps),
                             latent_path=args.save_latent))
    model = load_model_from_args(args)
    result = edit_faces(jobs, args.video, args.out, model, config=config, selection=selection,
                        model_id=file_fingerprint(args.checkpoint).model_id, stage_progress=progress,
                        workers=workers)
    return _report(result, workers, no_face="none of the chosen faces",
                   edited="with a chosen face; faces " + ", ".join(labels))


def _report(result, workers: Workers, *, no_face: str, edited: str) -> int:
    """The first process logs the frames copied unchanged (``no_face`` there) and the video it wrote, with
    how many frames were ``edited``; 0, the command's exit status."""
    if workers.is_root:
        for first, last in result.untouched:
            log.warning("%s in frames %d-%d: copied unchanged", no_face, first, last)
        log.info("wrote %s (%d frames, %d %s)", result.path, result.frames, result.edited, edited)
    return 0
