"""The whole face edit of a video: track -> align + encode -> mean identity -> edit -> invert -> decode ->
paste back -> write (reference section 2), with memory flat in the clip's length.

``edit_video`` is the one edit pipeline (the ``edit`` and ``clip-edit`` commands and the nodes' video
path use it): the face tracks (a quad and flags per frame) stay in memory; the aligned crops, the
features and x_T go to a latent file as they are made and are read back a chunk at a time; frames
are decoded once per pass (tracking, cropping, pasting) and the output video is written as it is
pasted. Each stage is its own function (``dva_model.tracks``, ``dva_model.stages``) for callers
that run them separately.
"""

from __future__ import annotations

import json
import logging
import math
import os
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from dva_model.distributed import Workers
from dva_model.edit.classifier import EditNorm
from dva_model.edit.identity import IdentityEdit, compose_identity_edits, identity_edits
from dva_model.errors import UserError
from dva_model.face.align import AlignConfig, inverse_coefficients
from dva_model.face.landmarks import FaceLandmarker
from dva_model.face.tracking import TrackConfig
from dva_model.face.paste import PasteConfig, build_masks
from dva_model.face.runs import true_runs
from dva_model.formats.latent_io import LatentFile
from dva_model.formats.video import DEFAULT_CHUNK_FRAMES, DEFAULT_CRF, FrameSelection
from dva_model.progress import ProgressCallback, StageProgress, report
from dva_model.progress import no_progress as _no_progress
from dva_model.formats.video import MAX_CRF
from dva_model.stages import (
    PersonEdit, auto_batch_size, decode_for_first, encode_video_to_file, invert_file, model_device, render_people,
)
from dva_model.tracks import AlignedClip, FaceTracks, align_in_memory, align_video, track_video

log = logging.getLogger(__name__)

__all__ = ["AlignedClip", "FaceTracks", "align_in_memory", "align_video", "track_video", "EditConfig", "EditResult",
           "edit_video", "edit_tracked", "encode_to_latent_file", "save_alignment", "load_alignment"]

PathLike = Union[str, os.PathLike]
ALIGNMENT_FORMAT = "dva-alignment/1"
DEFAULT_STEPS = 100  # the release uses 1000


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
    network call (0: from the device's free memory; a fixed default on the CPU). chunk_frames: frames
    per pipeline chunk (at least batch_size; with the queue sizes it bounds the memory). paste: mask
    and composite.
    lossless: exact RGB output (libx264rgb); otherwise x264 at ``crf``.
    """

    steps: int = DEFAULT_STEPS
    edits: tuple[tuple[str, float], ...] = ()
    deltas: tuple[tuple[torch.Tensor, float], ...] = ()
    edit_norm: EditNorm = "keep"
    batch_size: int = 0
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
        if self.chunk_frames < 1 or self.batch_size < 0:
            raise ValueError("chunk_frames must be at least 1 and batch_size 0 (automatic) or more.")
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


def paste_masks(model, source: torch.Tensor, edited: torch.Tensor, frame_numbers: Sequence[int], *,
                config: EditConfig, callback: Optional[ProgressCallback] = None) -> torch.Tensor:
    """Paste masks [M, 1, S, S] from BiSeNet parsing of the source (and edited) crops, all in memory.

    ``callback(done, total)`` after every parsing batch, over both parsing passes.
    """
    batch = config.batch_size or auto_batch_size(model_device(model), model.image_size)
    passes = 2 if config.paste.union_edited else 1  # both passes have the same number of batches

    def first(done: int, total: int) -> None:
        report(callback, done, passes * total)

    def second(done: int, total: int) -> None:
        report(callback, total + done, passes * total)

    source_labels = model.parse(source, batch_size=batch, callback=first).cpu()
    edited_labels = model.parse(edited, batch_size=batch, callback=second).cpu() if passes == 2 else None
    return build_masks(source_labels, edited_labels, config=config.paste, frame_numbers=frame_numbers)


def check_output_path(path: PathLike, out_path: PathLike) -> None:
    """Refuse, before any work, an output that would overwrite the input video or cannot be written
    (a folder, a missing, read-only or full folder: ``check_writable_file``)."""
    from dva_model.formats.files import check_writable_file

    out = Path(out_path)
    if out.resolve() == Path(path).resolve():
        raise UserError(f"The output {out} would overwrite the input video; choose another file name.")
    check_writable_file(out, what="the output video")


def row_names(faces: FaceTracks) -> tuple[str, ...]:
    """The name of every crop row: its source frame number, as the ``align`` command names the PNGs."""
    return tuple(f"{number:06d}" for number in faces.face_frame_numbers)


def encode_to_latent_file(
    path: PathLike,
    faces: FaceTracks,
    model,
    latent_path: PathLike,
    *,
    steps: int,
    selection: FrameSelection = FrameSelection(),
    batch_size: int = 0,
    chunk_frames: int = DEFAULT_CHUNK_FRAMES,
    model_id: str = "",
    stage_progress: StageProgress = _no_progress,
    workers: Workers = Workers(),
) -> LatentFile:
    """Crop, encode and invert every frame with a face of ``path`` into the latent file ``latent_path``.

    Returns the finished file, open for reading (close it when done). Stages "encode" (frames) and
    "invert" (UNet calls). ``batch_size`` 0 follows the device's free memory. With several ``workers``
    (torchrun) the first process encodes and writes the file (the clip identity needs every crop);
    the others open it to read and invert their share of the chunks (``invert_file``).
    """
    if faces.config.size != model.image_size:
        raise UserError(f"The model works on {model.image_size}px crops but the alignment made {faces.config.size}px ones.")
    batch = batch_size or auto_batch_size(model_device(model), model.image_size)
    chunk = max(chunk_frames, batch)
    file = None
    try:
        if workers.is_root:
            file = LatentFile.create(latent_path, frames=int(faces.has_face.sum()), image_size=model.image_size,
                                     steps=steps, model_id=model_id, frame_names=row_names(faces))
            encode_video_to_file(path, faces, model, file, selection=selection, batch_size=batch,
                                 chunk_frames=chunk, callback=stage_progress("encode"))
        if workers.distributed:
            shared = workers.broadcast_text(str(file.unfinished_path) if workers.is_root else "")
            file = file or LatentFile.open(shared)
            workers.barrier()  # every process has the file open before the first one renames it
        invert_file(model, file, file.read("identity"), steps=steps, batch_size=batch, chunk_frames=chunk,
                    callback=stage_progress("invert"), workers=workers)
        workers.barrier()  # every x_T is in the file before anyone reads it back
        file.commit()
    except BaseException:
        if file is not None:
            file.discard()
        raise
    return file


@contextmanager
def _work_latent(out_path: Path, keep: Optional[PathLike], tag: str = "") -> Iterator[Path]:
    """Where an edit's latent file goes: ``keep`` (left there), or a hidden file beside the output
    that is removed afterwards (beside it, not in /tmp, which may be a small RAM disk); ``tag`` tells
    apart the files of several people."""
    if keep is not None:
        yield Path(keep)
        return
    path = out_path.with_name(f".{out_path.stem}.latent-{os.getpid()}{tag}.safetensors")
    try:
        yield path
    except OSError as error:
        if error.filename != str(path):
            raise
        # The user never named this file: a full disk is reported for the output they asked for.
        raise OSError(error.errno, error.strerror, str(out_path)) from None
    finally:
        path.unlink(missing_ok=True)


@contextmanager
def _blamed_on(path: PathLike) -> Iterator[None]:
    """Name ``path`` in an operating-system error that names no file (a full disk while writing the
    latent file through its descriptor), so the one-sentence error says where the write went."""
    try:
        yield
    except OSError as error:
        if error.filename is not None or error.errno is None:
            raise
        raise OSError(error.errno, error.strerror, str(path)) from error


@dataclass(frozen=True)
class FaceEdit:
    """One person's edit: their ``faces`` (from ``track_video`` or ``tracks.tracks_of``), ``target``
    mapping their clip identity [512] to the identity to decode with [512], where to keep their encoding
    (``latent_path``; else a temporary file) and ``on_edited(rows, crops)`` seeing their edited crops."""

    faces: FaceTracks
    target: Callable[[torch.Tensor], torch.Tensor]
    latent_path: Optional[PathLike] = None
    on_edited: Optional[Callable[[slice, torch.Tensor], None]] = None


def edit_tracked(
    faces: FaceTracks,
    path: PathLike,
    out_path: PathLike,
    model,
    *,
    classifier=None,
    target: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    config: EditConfig = EditConfig(),
    selection: FrameSelection = FrameSelection(),
    latent_path: Optional[PathLike] = None,
    model_id: str = "",
    on_edited: Optional[Callable[[slice, torch.Tensor], None]] = None,
    stage_progress: StageProgress = _no_progress,
    workers: Workers = Workers(),
) -> EditResult:
    """Everything after tracking: crop + encode + invert into a latent file, then decode with the edited
    identity, paste back and write ``out_path``.

    ``faces`` must come from ``track_video(path, ..., selection=selection)``. ``target(identity)``
    replaces the edit of ``config`` (deltas, attributes) when given. ``latent_path`` keeps the
    encoding (else a temporary file is used). ``on_edited(rows, crops)`` sees the edited crops.
    Stages: "encode", "invert", "decode", "paste". With several ``workers`` (torchrun, every process
    calling this with the same arguments) the chunks of frames are split across the processes after
    the clip identity is computed, and the first process writes the latent file and the video.
    """
    edits = config.identity_edits(classifier)  # refuses attribute edits without a classifier
    target = target or (lambda identity: compose_identity_edits(identity, edits))
    return edit_faces([FaceEdit(faces, target, latent_path, on_edited)], path, out_path, model, config=config,
                      selection=selection, model_id=model_id, stage_progress=stage_progress, workers=workers)


def edit_faces(
    people: Sequence[FaceEdit],
    path: PathLike,
    out_path: PathLike,
    model,
    *,
    config: EditConfig = EditConfig(),
    selection: FrameSelection = FrameSelection(),
    model_id: str = "",
    stage_progress: StageProgress = _no_progress,
    workers: Workers = Workers(),
) -> EditResult:
    """Edit several people of one video in one run: each person's crops are encoded and inverted into
    their own latent file with their own clip identity, decoded with their own target identity, and
    all are pasted into the same frames in the order of ``people`` (a later face covers an earlier one
    where they overlap). Frames where nobody chosen is present, and every pixel outside the chosen
    faces' paste masks, keep the source's values. Stages per person "encode", "invert"; then "decode",
    "paste" once. ``config``'s own edits are not used: each ``FaceEdit.target`` says the edit.
    Several ``workers`` (torchrun, every process calling this with the same arguments) share each
    person's inversion and the decoding, chunk by chunk; the first process writes the files.
    """
    batch = config.batch_size or auto_batch_size(model_device(model), model.image_size)
    batch = int(workers.broadcast_text(str(batch)))  # the first process's: the same batches everywhere
    chunk = max(config.chunk_frames, batch)
    with ExitStack() as stack:
        jobs = []
        for number, person in enumerate(people):
            work = stack.enter_context(_work_latent(Path(out_path), person.latent_path, f"-{number}"))
            with _blamed_on(person.latent_path or out_path):  # the hidden work file means nothing to the user
                latent = stack.enter_context(encode_to_latent_file(
                    path, person.faces, model, work, steps=config.steps, selection=selection, batch_size=batch,
                    chunk_frames=chunk, model_id=model_id, stage_progress=stage_progress, workers=workers))
            jobs.append(PersonEdit(person.faces, latent, person.target(latent.read("identity")), person.on_edited))
        if workers.is_root:
            written = render_people(path, out_path, jobs, model, selection=selection, paste=config.paste,
                                    batch_size=batch, chunk_frames=chunk, crf=config.crf, lossless=config.lossless,
                                    decode_callback=stage_progress("decode"), paste_callback=stage_progress("paste"),
                                    workers=workers)
        else:
            decode_for_first(model, jobs, batch_size=batch, chunk_frames=chunk, workers=workers)
            written = Path(out_path)  # written by the first process
    anyone = np.logical_or.reduce([person.faces.has_face for person in people])  # [N]
    indices = people[0].faces.indices
    untouched = tuple((indices[run.start], indices[run.stop - 1]) for run in true_runs(~anyone))
    return EditResult(path=written, frames=len(indices), edited=int(anyone.sum()), untouched=untouched)

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
    latent_path: Optional[PathLike] = None,
    stage_progress: StageProgress = _no_progress,
) -> EditResult:
    """Edit the face in a video and write the result as MP4 (H.264) with the source's audio.

    model: a ``DVAModel`` (checkpoint.load_model). classifier: an ``AttributeClassifier`` for
    ``config.edits``. The output has the selected frames' count, the source size and fps (divided by
    the stride), and the audio of the selected time range. Frames without a face are copied unchanged;
    no partial file is left at ``out_path`` on any error. Memory does not grow with the clip's length.
    """
    check_output_path(path, out_path)
    config.identity_edits(classifier)  # refuses attribute edits without a classifier before any work
    faces = track_video(path, landmarker, selection=selection, align=align, track=track,
                        chunk_size=config.chunk_frames, callback=stage_progress("faces"))
    return edit_tracked(faces, path, out_path, model, classifier=classifier, config=config, selection=selection,
                        latent_path=latent_path, stage_progress=stage_progress)
