"""The whole face edit of a video: align -> encode -> mean identity -> edit -> invert -> decode ->
paste back -> write (reference section 2), streaming full-resolution frames chunk by chunk.

The video is decoded three times (find faces, crop, paste), so at most one chunk of full-resolution
float frames is in memory at once. What is held for the whole clip is crop-sized: the aligned and the
edited crops ([M, 3, 256, 256] float32 each, M = frames with a face, ~0.8 MB per frame each), their
paste masks and the features.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from dva_model.face.align import AlignConfig, align_frames, compute_quads, inverse_coefficients
from dva_model.edit.classifier import EditNorm
from dva_model.edit.identity import IdentityEdit, compose_identity_edits, identity_edits
from dva_model.errors import UserError
from dva_model.face.landmarks import FaceLandmarker
from dva_model.face.tracking import FaceTrack, TrackConfig, track_faces
from dva_model.face.paste import PasteConfig, build_masks, crop_rows, paste_frames
from dva_model.progress import ProgressCallback, StageProgress, report
from dva_model.progress import no_progress as _no_progress
from dva_model.diffusion import ddim_invert, ddim_sample
from dva_model.distributed import Workers
from dva_model.model import batches, mean_identity
from dva_model.formats.video import (
    DEFAULT_CHUNK_FRAMES, DEFAULT_CRF, MAX_CRF, FrameSelection, VideoInfo, VideoWriter, audio_window, frame_times, iter_frames,
    probe,
)

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
ALIGNMENT_FORMAT = "dva-alignment/1"
DEFAULT_STEPS = 100  # the release uses 1000


@dataclass(frozen=True, kw_only=True)
class AlignedClip:
    """Every selected frame of a video, aligned.

    indices: the selected source frame numbers (N of them). track: the face track over those N frames.
    quads: [N, 4, 2] float64 pixel-index quads (NaN where ``has_face`` is False).
    has_face: [N] bool. crops: [M, 3, S, S] float32 in [-1, 1] on the CPU, one per frame with a face
    (M = has_face.sum()), in frame order.
    """

    info: VideoInfo
    indices: range
    track: FaceTrack
    quads: np.ndarray
    has_face: np.ndarray
    crops: torch.Tensor
    config: AlignConfig

    @property
    def face_rows(self) -> np.ndarray:
        """Positions (0..N-1) of the frames that have a face, i.e. the row order of ``crops``."""
        return np.flatnonzero(self.has_face)


def find_faces(
    path: PathLike,
    landmarker: FaceLandmarker,
    *,
    selection: FrameSelection = FrameSelection(),
    track: TrackConfig = TrackConfig(),
    chunk_size: int = DEFAULT_CHUNK_FRAMES,
    callback: Optional[ProgressCallback] = None,
) -> tuple[VideoInfo, range, FaceTrack]:
    """First pass: detect and landmark one tracked face in every selected frame (uint8 frames)."""
    info = probe(path)
    indices = selection.indices(info.frame_count)
    chunks = (frames.numpy() for _, frames in iter_frames(path, selection=selection, chunk_size=chunk_size, dtype=torch.uint8))
    face_track = track_faces(chunks, landmarker, config=track, total=len(indices), callback=callback, source=str(path),
                             frame_numbers=indices)
    return info, indices, face_track


def align_video(
    path: PathLike,
    landmarker: FaceLandmarker,
    *,
    selection: FrameSelection = FrameSelection(),
    align: AlignConfig = AlignConfig(),
    track: TrackConfig = TrackConfig(),
    chunk_size: int = DEFAULT_CHUNK_FRAMES,
    device: Union[str, torch.device] = "cpu",
    stage_progress: StageProgress = _no_progress,
) -> AlignedClip:
    """Find, smooth and crop the face in every selected frame of ``path`` (two decoding passes).

    Raises ``NoFaceError`` when no frame has a face; frames in long gaps are flagged (``has_face``).
    """
    info, indices, face_track = find_faces(path, landmarker, selection=selection, track=track,
                                           chunk_size=chunk_size, callback=stage_progress("faces"))
    indices = indices[: len(face_track.detected)]  # a file may hold fewer frames than its header says
    quads, has_face = _smoothed_quads(face_track, align)
    callback = stage_progress("crop")
    crops, done = [], 0
    for chunk_indices, frames in iter_frames(path, selection=selection, chunk_size=chunk_size):
        rows = np.arange(done, min(done + len(chunk_indices), len(indices)))
        keep = rows[has_face[rows]]
        if len(keep):
            picked = frames[torch.as_tensor(keep - done)].to(device)
            crops.append(align_frames(picked, quads[keep], config=align).cpu())
        done += len(rows)
        report(callback, done, len(indices))
        if done == len(indices):
            break
    return AlignedClip(info=info, indices=indices, track=face_track, quads=quads, has_face=has_face,
                       crops=torch.cat(crops) if crops else torch.zeros(0, 3, align.size, align.size), config=align)


def align_in_memory(
    frames: torch.Tensor,
    landmarker: FaceLandmarker,
    *,
    align: AlignConfig = AlignConfig(),
    track: TrackConfig = TrackConfig(),
    chunk_size: int = DEFAULT_CHUNK_FRAMES,
    device: Union[str, torch.device] = "cpu",
    callback: Optional[ProgressCallback] = None,
) -> AlignedClip:
    """``align_video`` for frames already in memory, [N, H, W, 3] float in [0, 1] (e.g. ComfyUI IMAGE).

    Same steps (track -> smoothed quads -> crops); the clip's info carries no file, fps or audio.
    """
    count, height, width, _ = frames.shape
    chunks = (frames[i: i + chunk_size] for i in range(0, count, chunk_size))
    face_track = track_faces(chunks, landmarker, config=track, total=count, callback=callback, source="the frames")
    quads, has_face = _smoothed_quads(face_track, align)
    rows = np.flatnonzero(has_face)
    crops = [align_frames(frames[torch.as_tensor(part)].to(device), quads[part], config=align).cpu()
             for part in (rows[i: i + chunk_size] for i in range(0, len(rows), chunk_size))]
    info = VideoInfo(path="", frame_count=count, fps=Fraction(0), width=width, height=height, codec="",
                     has_audio=False, audio_codec=None)
    return AlignedClip(info=info, indices=range(count), track=face_track, quads=quads, has_face=has_face,
                       crops=torch.cat(crops), config=align)


def _smoothed_quads(face_track: FaceTrack, align: AlignConfig) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed quads [N, 4, 2] (NaN without a face) and the per-frame face flags [N] of a track."""
    quads = compute_quads(face_track.landmarks, face_track.has_face, config=align)
    return quads, ~np.isnan(quads).any(axis=(1, 2))


def save_alignment(path: PathLike, clip: AlignedClip, *, crop_names: Sequence[str]) -> Path:
    """Write the sidecar JSON of an aligned clip: per frame the face flags, landmarks, quad and the
    release's 8 inverse-warp coefficients (frame continuous coords -> crop continuous coords)."""
    from dva_model.formats.files import write_atomically

    coefficients = np.full((len(clip.quads), 8), np.nan)
    rows = clip.face_rows
    if len(rows):
        coefficients[rows] = inverse_coefficients(clip.quads[rows], clip.config.size)
    names = iter(crop_names)
    frames = []
    for row, frame_number in enumerate(clip.indices):
        face = bool(clip.has_face[row])
        frames.append({
            "frame": int(frame_number),
            "has_face": face,
            "detected": bool(clip.track.detected[row]),
            "crop": next(names) if face else None,
            "landmarks": clip.track.landmarks[row].round(3).tolist() if face else None,
            "quad": clip.quads[row].tolist() if face else None,
            "inverse_coefficients": coefficients[row].tolist() if face else None,
        })
    document = {
        "format": ALIGNMENT_FORMAT,
        "video": str(clip.info.path),
        "width": clip.info.width, "height": clip.info.height,
        "fps": str(clip.info.fps), "frame_count": clip.info.frame_count,
        "rotation": clip.info.rotation,  # the source's display rotation; sizes and points are upright
        "crop_size": clip.config.size, "method": clip.config.method,
        "sigma_centre": clip.config.sigma_centre, "sigma_axes": clip.config.sigma_axes,
        "frames": frames,
    }
    header = json.dumps({k: v for k, v in document.items() if k != "frames"}, indent=1)[:-2]
    text = header + ',\n "frames": [\n' + ",\n".join("  " + json.dumps(f) for f in frames) + "\n ]\n}\n"
    path = Path(path)
    write_atomically(path, lambda tmp: tmp.write_text(text))
    return path


def load_alignment(path: PathLike) -> dict:
    """Read a sidecar written by ``save_alignment`` (a dict; quads as [N, 4, 2] lists, None without face)."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"Cannot read the alignment file {path} ({error}).") from error
    if document.get("format") != ALIGNMENT_FORMAT:
        raise UserError(f"{path} is not an alignment file written by `python -m dva_model align`.")
    return document


@dataclass(frozen=True, kw_only=True)
class EditConfig:
    """Options of ``edit_video`` beyond alignment.

    steps: DDIM steps S for inversion and decoding. edits: (CelebA attribute, scale) pairs.
    deltas: (identity delta [512], scale) pairs from the CLIP edit, applied before ``edits``.
    edit_norm: "keep" (zero edit = reconstruction) or "unit" (the release). batch_size: frames per
    network call. chunk_frames: frames per invert/decode/paste chunk. paste: mask and composite.
    lossless: exact RGB output (libx264rgb); otherwise x264 at ``crf``.
    """

    steps: int = DEFAULT_STEPS
    edits: tuple[tuple[str, float], ...] = ()
    deltas: tuple[tuple[torch.Tensor, float], ...] = ()
    edit_norm: EditNorm = "keep"
    batch_size: int = 8
    chunk_frames: int = DEFAULT_CHUNK_FRAMES
    paste: PasteConfig = PasteConfig()
    lossless: bool = False
    crf: int = DEFAULT_CRF

    def identity_edits(self, classifier=None) -> tuple[IdentityEdit, ...]:
        """``deltas`` then ``edits`` (on ``classifier``) as one edit sequence; refuses attribute edits
        without a classifier."""
        return identity_edits(deltas=self.deltas, attributes=self.edits, classifier=classifier, norm=self.edit_norm)

    def __post_init__(self) -> None:
        from dva_model.diffusion.schedule import respaced_timesteps

        if self.steps < 2:
            raise ValueError(f"steps must be at least 2 for DDIM inversion, got {self.steps}.")
        respaced_timesteps(self.steps)  # a count the release's respacing cannot make fails before alignment
        if self.chunk_frames < 1 or self.batch_size < 1:
            raise ValueError("chunk_frames and batch_size must be at least 1.")
        if not 0 <= self.crf <= MAX_CRF:
            raise ValueError(f"crf must be 0-{MAX_CRF} (x264's range), got {self.crf}.")
        for _, scale in self.edits + self.deltas:
            if not math.isfinite(scale):
                raise ValueError(f"Edit scales must be finite numbers, got {scale}.")


@dataclass(frozen=True, kw_only=True)
class EditResult:
    """What ``edit_video`` wrote: the output path, frames written, frames edited, frames left untouched."""

    path: Path
    frames: int
    edited: int
    untouched: tuple[tuple[int, int], ...]  # inclusive source frame ranges without a face


def reconstruct_crops(
    model, crops: torch.Tensor, z_lnd: torch.Tensor, identity: torch.Tensor, target: torch.Tensor, *,
    config: EditConfig, callback: Optional[ProgressCallback] = None, workers: Workers = Workers(),
) -> torch.Tensor:
    """Invert each crop with the clip identity and decode it with the target identity, chunk by chunk.

    crops: [M, 3, S, S] in [-1, 1] (CPU); z_lnd: [M, 102]; identity, target: [512].
    Returns the decoded crops [M, 3, S, S] float32 in [-1, 1] on the CPU. With several ``workers``
    (torchrun) each process does its block of rows (``shard_alignment``: the same chunks and batches
    as one process, so the same numbers) and every process gets all rows back in order.
    """
    count, align = len(crops), shard_alignment(config)
    mine = workers.shard(count, align=align)
    if workers.distributed:
        log.info("process %d of %d: inverting and decoding crops %d-%d of %d", workers.rank, workers.world,
                 mine.start, mine.stop - 1, count)
    crops, z_lnd = crops[mine], z_lnd[mine]
    calls_per_frame_batch = ddim_invert.model_calls(config.steps) + ddim_sample.model_calls(config.steps)
    total = calls_per_frame_batch * sum(-(-(s.stop - s.start) // config.batch_size)
                                        for s in batches(len(crops), config.chunk_frames))
    done = 0

    def step(_done: int, _total: int) -> None:
        nonlocal done
        done += 1
        report(callback, done, total)

    out = []
    for part in batches(len(crops), config.chunk_frames):
        x_T = model.invert(crops[part], identity, z_lnd[part], steps=config.steps, batch_size=config.batch_size, callback=step)
        decoded = model.decode(x_T, target, z_lnd[part], steps=config.steps, batch_size=config.batch_size, callback=step)
        out.append(decoded.float().cpu())
    edited = torch.cat(out) if out else crops.new_zeros((0, *crops.shape[1:]))  # a short clip's idle process
    return workers.gather(edited, count=count, align=align)


def shard_alignment(config: EditConfig) -> int:
    """Rows per block when the crops are split across processes: a block boundary must be a chunk and
    batch boundary of the one-process run, so every UNet call sees the same frames (same results)."""
    return config.batch_size if config.chunk_frames % config.batch_size == 0 else config.chunk_frames


def paste_masks(model, source: torch.Tensor, edited: torch.Tensor, frame_numbers: Sequence[int], *,
                config: EditConfig, callback: Optional[ProgressCallback] = None) -> torch.Tensor:
    """Paste masks [M, 1, S, S] from BiSeNet parsing of the source (and edited) crops.

    ``callback(done, total)`` after every parsing batch, over both parsing passes.
    """
    passes = 2 if config.paste.union_edited else 1  # both passes have the same number of batches

    def first(done: int, total: int) -> None:
        report(callback, done, passes * total)

    def second(done: int, total: int) -> None:
        report(callback, total + done, passes * total)

    source_labels = model.parse(source, batch_size=config.batch_size, callback=first).cpu()
    edited_labels = model.parse(edited, batch_size=config.batch_size, callback=second).cpu() if passes == 2 else None
    return build_masks(source_labels, edited_labels, config=config.paste, frame_numbers=frame_numbers)


def write_pasted(
    path: PathLike, out_path: PathLike, clip: AlignedClip, edited: torch.Tensor, masks: torch.Tensor, *,
    selection: FrameSelection, config: EditConfig, callback: Optional[ProgressCallback] = None,
) -> Path:
    """Third pass: decode the frames again, paste the edited crops, encode to ``out_path`` with audio."""
    info, indices = clip.info, clip.indices
    rows = crop_rows(clip.has_face)
    times = frame_times(path)  # [frame_count] seconds: output timing and audio follow the source's clock
    window = audio_window(info, indices, times)
    with VideoWriter(out_path, fps=info.fps / selection.stride, width=info.width, height=info.height,
                     audio_from=path if info.has_audio else None, audio_window_s=window,
                     crf=config.crf, lossless=config.lossless) as writer:
        done = 0
        for chunk_indices, frames in iter_frames(path, selection=selection, chunk_size=config.chunk_frames):
            positions = np.arange(done, done + len(chunk_indices))
            if positions[-1] >= len(indices):
                break  # more frames than the aligned pass saw (a file that changed): stop at its count
            pasted, _ = paste_frames(frames, positions, rows, edited, masks, clip.quads, crops=clip.crops,
                                     composite=config.paste.composite)
            writer.write(pasted, times=times[np.asarray(chunk_indices)])
            done += len(chunk_indices)
            report(callback, done, len(indices))
    return Path(out_path)


def edit_clip(
    clip: AlignedClip,
    path: PathLike,
    out_path: PathLike,
    model,
    *,
    classifier=None,
    config: EditConfig = EditConfig(),
    selection: FrameSelection = FrameSelection(),
    stage_progress: StageProgress = _no_progress,
    workers: Workers = Workers(),
) -> EditResult:
    """Everything after alignment: encode, edit, invert, decode, paste back and write ``out_path``.

    ``clip`` must come from ``align_video(path, ..., selection=selection)``. With several ``workers``
    (torchrun), every process computes the clip identity, inverts and decodes its block of frames,
    and the first process pastes and writes the whole video; the others write nothing.
    """
    if clip.config.size != model.image_size:
        raise UserError(f"The model works on {model.image_size}px crops but the alignment made {clip.config.size}px ones.")
    edits = config.identity_edits(classifier)
    z_id, z_lnd = model.encode_features(clip.crops, batch_size=config.batch_size, callback=stage_progress("encode"))
    identity = mean_identity(z_id)
    target = compose_identity_edits(identity, edits)
    edited = reconstruct_crops(model, clip.crops, z_lnd, identity, target, config=config,
                               callback=stage_progress("invert+decode"), workers=workers)
    untouched = tuple((clip.indices[a], clip.indices[b]) for a, b in clip.track.missing_runs())
    result = EditResult(path=Path(out_path), frames=len(clip.indices), edited=int(clip.has_face.sum()),
                        untouched=untouched)
    if not workers.is_root:
        return result  # the first process writes the video
    frame_numbers = [clip.indices[row] for row in clip.face_rows]
    masks = paste_masks(model, clip.crops, edited, frame_numbers, config=config)
    write_pasted(path, out_path, clip, edited, masks, selection=selection, config=config,
                 callback=stage_progress("paste"))
    return result


def check_output_path(path: PathLike, out_path: PathLike) -> None:
    """Refuse, before any work, an output that would overwrite the input video or cannot be written
    (a folder, a missing, read-only or full folder: ``check_writable_file``)."""
    from dva_model.formats.files import check_writable_file

    out = Path(out_path)
    if out.resolve() == Path(path).resolve():
        raise UserError(f"The output {out} would overwrite the input video; choose another file name.")
    check_writable_file(out, what="the output video")


def edit_video(
    path: PathLike,
    out_path: PathLike,
    model,
    landmarker: FaceLandmarker,
    *,
    classifier=None,
    config: EditConfig = EditConfig(),
    selection: FrameSelection = FrameSelection(),
    align: AlignConfig = AlignConfig(),
    track: TrackConfig = TrackConfig(),
    stage_progress: StageProgress = _no_progress,
) -> EditResult:
    """Edit the face in a video and write the result as MP4 (H.264) with the source's audio.

    model: a ``DVAModel`` (checkpoint.load_model). classifier: an ``AttributeClassifier`` for
    ``config.edits``. The output has the selected frames' count, the source size and fps (divided by
    the stride), and the audio of the selected time range. Frames without a face are copied unchanged;
    no partial file is left at ``out_path`` on any error.
    """
    check_output_path(path, out_path)
    config.identity_edits(classifier)  # refuses attribute edits without a classifier before any work
    device = next(model.parameters()).device
    clip = align_video(path, landmarker, selection=selection, align=align, track=track,
                       chunk_size=config.chunk_frames, device=device, stage_progress=stage_progress)
    return edit_clip(clip, path, out_path, model, classifier=classifier, config=config, selection=selection,
                     stage_progress=stage_progress)
