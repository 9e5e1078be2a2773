"""``clip-edit``: a text edit ("face" -> "face with beard") learnt on one frame -> an identity delta file.

The clip comes as a video (aligned here), a folder of aligned crops or a latent file from ``encode``.
The delta is saved; optionally the edited crops and (for a video) the edited video are rendered with
it, after which any ``--attribute`` edits are applied on top (CLIP delta first, then attributes).
"""

import argparse
import logging
from pathlib import Path

from dva_model.edit.clip_edit import (
    ClipEditConfig, optimise_delta, reference_from_crops, reference_from_latent, save_delta,
)
from dva_model.edit.identity import DEFAULT_SCALE, DeltaEdit, compose_identity_edits
from dva_model.cli.align import add_face_options, landmarker_from_args
from dva_model.cli.common import add_attribute_options, add_model_options, identity_edits_from_args, load_model_from_args
from dva_model.errors import UserError
from dva_model.cli.options import ddim_steps, finite_float
from dva_model.cli.progress_bar import terminal_progress
from dva_model.formats.files import check_writable_file, check_writable_folder
from dva_model.formats.video import FrameSelection

log = logging.getLogger(__name__)

DEFAULTS = ClipEditConfig(source_text="face", target_text="face")  # the published settings


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "clip-edit", help="learn a text-driven identity edit with CLIP and save it as a delta file",
        description="Optimise the identity of one reference frame so that one DDIM step of its 5-step "
                    "trajectory moves along the CLIP direction from --source to --target text (the "
                    "published CLIP edit), and save the identity delta; optionally render the edit.",
    )
    add_model_options(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", type=Path, help="input video (aligned here)")
    source.add_argument("--aligned", type=Path, help="folder of aligned 256x256 crops")
    source.add_argument("--latent", type=Path, help="latent file written by encode")
    parser.add_argument("--source", required=True, help="neutral text, e.g. 'face'")
    parser.add_argument("--target", required=True, help="target text, e.g. 'face with beard'")
    parser.add_argument("--out", type=Path, required=True, help="identity delta file to write (.safetensors)")
    parser.add_argument("--clip-weights", type=Path,
                        help="OpenAI CLIP ViT-B-16.pt or an open_clip file (default: the local CLIP caches)")
    parser.add_argument("--download-clip", action="store_true",
                        help="download OpenAI's ViT-B/16 through open_clip when no local copy exists")
    parser.add_argument("--reference-frame", type=int, default=0, help="frame the edit is learnt on (default 0)")
    parser.add_argument("--iterations", type=int, default=DEFAULTS.iterations, help="Adam iterations (release 2000)")
    parser.add_argument("--lr", type=finite_float, default=DEFAULTS.learning_rate, help="Adam learning rate (release 0.002)")
    parser.add_argument("--clip-weight", type=finite_float, default=DEFAULTS.clip_weight, help="CLIP loss weight (README 3)")
    parser.add_argument("--id-weight", type=finite_float, default=DEFAULTS.identity_weight,
                        help="identity loss weight (README 1)")
    parser.add_argument("--l1-weight", type=finite_float, default=DEFAULTS.l1_weight, help="masked L1 weight (README 5)")
    parser.add_argument("--scale", type=finite_float, default=DEFAULT_SCALE,
                        help=f"strength when rendering: z_id + scale * delta (README {DEFAULT_SCALE})")
    parser.add_argument("--decode-out", type=Path, help="also write the edited crops as PNG here")
    parser.add_argument("--edited-video", type=Path, help="with --video: also write the edited video (.mp4)")
    parser.add_argument("--steps", type=ddim_steps, default=100,
                        help="DDIM steps to render crops or video (release 1000; a latent keeps its own)")
    add_attribute_options(parser, after=" applied after the delta when rendering")
    parser.add_argument("--start", type=int, default=0, help="with --video: first frame to use")
    parser.add_argument("--stop", type=int, help="with --video: frame to stop before")
    parser.add_argument("--stride", type=int, default=1, help="with --video: use every n-th frame")
    parser.add_argument("--max-frames", type=int, help="with --video: use at most this many frames")
    add_face_options(parser)
    parser.set_defaults(func=run)


def _tracked_clip(args: argparse.Namespace):
    from dva_model.face.align import AlignConfig
    from dva_model.face.tracking import TrackConfig
    from dva_model.pipeline import track_video

    selection = FrameSelection(start=args.start, stop=args.stop, stride=args.stride, max_frames=args.max_frames)
    faces = track_video(args.video, landmarker_from_args(args, device=args.device), selection=selection,
                        align=AlignConfig(method=args.align_method), track=TrackConfig(max_gap=args.max_gap),
                        callback=terminal_progress("faces", enabled=not args.quiet))
    return faces, selection


def _reference_crop(args: argparse.Namespace, faces, selection, device):
    """The aligned crop [1, 3, S, S] of crop row ``--reference-frame`` (the video is decoded up to it)."""
    from dva_model.tracks import iter_crops

    index = args.reference_frame
    if not 0 <= index < int(faces.has_face.sum()):
        raise UserError(f"--reference-frame {index} is out of range: the clip has {int(faces.has_face.sum())} "
                        "frames with a face.")
    for rows, crops in iter_crops(args.video, faces, selection=selection, device=device):
        if rows.start <= index < rows.stop:
            return crops[index - rows.start: index - rows.start + 1].cpu()
    raise UserError(f"{args.video} ended before frame {index} on the second pass; the file changed.")


def run(args: argparse.Namespace) -> int:
    from dva_model.edit.clip_loss import clip_loss_for, load_clip

    if args.edited_video is not None:
        if args.video is None:
            raise UserError("--edited-video needs --video (the frames to paste the edited faces into).")
        from dva_model.pipeline import check_output_path

        check_output_path(args.video, args.edited_video)
    check_writable_file(args.out, what="the identity delta", make_parents=True)
    if args.decode_out is not None:
        check_writable_folder(args.decode_out, what="the decoded crops folder")
    config = ClipEditConfig(source_text=args.source, target_text=args.target, iterations=args.iterations,
                            learning_rate=args.lr, clip_weight=args.clip_weight, identity_weight=args.id_weight,
                            l1_weight=args.l1_weight)
    attributes = identity_edits_from_args(args)
    clip_loss = clip_loss_for(load_clip(args.clip_weights, device=args.device, allow_download=args.download_clip))
    faces, selection = _tracked_clip(args) if args.video else (None, None)
    model = load_model_from_args(args)
    progress = (lambda stage: terminal_progress(stage, enabled=not args.quiet))
    if args.latent is not None:
        from dva_model.formats.latent_io import load_latent

        latent = load_latent(args.latent)
        reference = reference_from_latent(model, latent, index=args.reference_frame, callback=progress("reference"))
    else:
        from dva_model.formats.image_io import read_crops

        if faces is None:
            names, crops = read_crops(args.aligned, size=model.image_size)
            reference = reference_from_crops(model, crops, index=args.reference_frame)
        else:
            reference = reference_from_crops(model, _reference_crop(args, faces, selection, args.device))
    result = optimise_delta(model, clip_loss, reference, config=config, callback=progress("clip-edit"))
    save_delta(args.out, result.delta)
    first, last = result.losses[0], result.losses[-1]
    log.info("wrote %s; loss %.4f -> %.4f (clip %.4f -> %.4f)", args.out, first.total, last.total,
             first.clip, last.clip)

    edits = (DeltaEdit(delta=result.delta, scale=args.scale, norm=args.edit_norm),) + attributes.edits()

    def target(identity):
        return compose_identity_edits(identity, edits)

    if args.latent is not None and args.decode_out is not None:
        _render_latent(args, model, latent, target, progress)
    elif faces is not None and (args.decode_out is not None or args.edited_video is not None):
        _render_video(args, model, faces, selection, target, progress)
    elif args.decode_out is not None:
        _render_crops(args, model, crops, names, target, progress)
    return 0


def _render_latent(args, model, latent, target, progress) -> None:
    from dva_model.formats.image_io import write_crops

    crops = model.decode(latent.x_T, target(latent.identity), latent.z_lnd, steps=latent.steps,
                         batch_size=args.batch_size, callback=progress("decode"))
    names = latent.frame_names or tuple(f"{i:05d}" for i in range(len(crops)))
    write_crops(args.decode_out, names, crops)
    log.info("wrote %d edited crops to %s", len(crops), args.decode_out)


def _render_crops(args, model, crops, names, target, progress) -> None:
    """--aligned: encode, invert and decode the crops folder (held in memory, as read) with the edit."""
    from dva_model.formats.image_io import write_crops
    from dva_model.model import mean_identity

    z_id, z_lnd = model.encode_features(crops, batch_size=args.batch_size, callback=progress("encode"))
    identity = mean_identity(z_id)
    x_T = model.invert(crops, identity, z_lnd, steps=args.steps, batch_size=args.batch_size, callback=progress("invert"))
    edited = model.decode(x_T, target(identity), z_lnd, steps=args.steps, batch_size=args.batch_size,
                          callback=progress("decode"))
    write_crops(args.decode_out, names, edited)
    log.info("wrote %d edited crops to %s", len(edited), args.decode_out)


def _render_video(args, model, faces, selection, target, progress) -> None:
    """--video: the streaming edit pipeline with the learnt delta; edited crops (--decode-out) and the
    edited video (--edited-video, else a temporary file) are written chunk by chunk."""
    import tempfile

    from dva_model.formats.image_io import write_crops
    from dva_model.pipeline import EditConfig, edit_tracked, row_names

    names = row_names(faces)

    def save_crops(rows, crops):
        write_crops(args.decode_out, names[rows], crops)

    on_edited = save_crops if args.decode_out is not None else None
    config = EditConfig(steps=args.steps, batch_size=args.batch_size)
    with tempfile.TemporaryDirectory(dir=(args.edited_video or args.out).parent, prefix=".clip-edit-") as scratch:
        out = args.edited_video or Path(scratch) / "edited.mp4"  # crops only: the video is a by-product
        edit_tracked(faces, args.video, out, model, target=target, config=config, selection=selection,
                     on_edited=on_edited, stage_progress=progress)
    if args.decode_out is not None:
        log.info("wrote %d edited crops to %s", len(names), args.decode_out)
    if args.edited_video is not None:
        log.info("wrote %s", args.edited_video)
