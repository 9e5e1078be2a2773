"""The streaming edit of a video, one function per stage (reference section 2, chunk by chunk).

    encode_video_to_file  pass 2: frames -> aligned crops -> z_id, z_lnd; crops and features go to a
                          latent file as they are made; the clip identity is a running mean
    invert_file           crops (read back from the file) -> x_T by DDIM inversion, into the file
    render_video          pass 3: x_T -> edited crops -> paste masks -> pasted frames -> MP4 with audio

(pass 1, the face tracks, is ``dva_model.tracks.track_video``.) The model runs in the caller's
thread; decoding, warping, file reading, paste-back and video encoding run in worker threads joined
by bounded queues (``dva_model.workers``), so what is in memory at any time is a few chunks of
frames and crops, whatever the clip's length. Everything a whole-clip step needs is small and comes
first: the smoothed quads (the tracks) and the identity (a sum over the crops). The paste masks'
temporal smoothing reads a window of neighbouring frames, so the paste of a chunk waits until the
masks of the frames after it are known.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from dva_model.constants import ID_DIM
from dva_model.distributed import Workers
from dva_model.face.paste import (
    PasteConfig, crop_rows, paste_frames, run_bounds, smooth_rows, spatial_masks, temporal_radius,
)
from dva_model.formats.latent_io import LatentFile
from dva_model.host_memory import limit_heap_growth, trim_heap
from dva_model.formats.video import FrameSelection, VideoWriter, audio_window, frame_times, to_uint8
from dva_model.model import batches
from dva_model.progress import ProgressCallback, report
from dva_model.tracks import FaceTracks, decoded_chunks, iter_crops
from dva_model.workers import Background, QueueStats, Sink

log = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]
DEFAULT_CPU_BATCH = 8  # frames per network call on the CPU
# Estimated activation memory of one 256x256 frame in one UNet call (eager), used to size batches
# from the device's free memory; scaled with the pixel count for other sizes.
UNET_BYTES_PER_FRAME = 1536 * 2**20
MAX_AUTO_BATCH = 64
FREE_MEMORY_USE = 0.8  # leave a fifth of the free memory to the allocator and other tensors


def auto_batch_size(device: Union[str, torch.device], image_size: int, *, free_bytes: Optional[int] = None) -> int:
    """Frames per network call for ``device``: from its free memory on CUDA (``torch.cuda.mem_get_info``,
    or ``free_bytes`` when the caller's memory manager knows better), a fixed default elsewhere."""
    device = torch.device(device)
    if device.type != "cuda" and free_bytes is None:
        return DEFAULT_CPU_BATCH
    free = torch.cuda.mem_get_info(device)[0] if free_bytes is None else free_bytes
    per_frame = UNET_BYTES_PER_FRAME * (image_size / 256) ** 2
    return max(1, min(MAX_AUTO_BATCH, int(free * FREE_MEMORY_USE // per_frame)))


def model_device(model) -> torch.device:
    return next(model.parameters()).device


class _CallCounter:
    """One running count of network calls over several model calls (each reports its own count)."""

    def __init__(self, callback: Optional[ProgressCallback], total: int) -> None:
        self.callback, self.total, self.done = callback, total, 0

    def __call__(self, _done: int, _total: int) -> None:
        self.done += 1
        report(self.callback, self.done, self.total)

    def skip(self, calls: int) -> None:
        """Count ``calls`` that another process made."""
        self.done += calls
        report(self.callback, self.done, self.total)


def _calls(rows: int, chunk: int, batch: int, per_batch: int) -> int:
    """Network calls to run ``rows`` frames in chunks of ``chunk`` and batches of ``batch``."""
    full, rest = divmod(rows, chunk)
    return per_batch * (full * -(-chunk // batch) + -(-rest // batch))


def encode_video_to_file(
    path: PathLike,
    faces: FaceTracks,
    model,
    file: LatentFile,
    *,
    selection: FrameSelection = FrameSelection(),
    batch_size: int = DEFAULT_CPU_BATCH,
    chunk_frames: int = 16,
    callback: Optional[ProgressCallback] = None,
    stats: Optional[QueueStats] = None,
) -> torch.Tensor:
    """Pass 2: crops, z_id and z_lnd of every frame with a face into ``file``; returns the clip identity.

    The identity is the mean of z_id over every crop ([512] float32, not re-normalised, as
    published), accumulated in float64 chunk by chunk; it is also written to ``file``.
    """
    limit_heap_growth()
    total, count = torch.zeros(ID_DIM, dtype=torch.float64), 0
    for rows, crops in iter_crops(path, faces, selection=selection, chunk_size=chunk_frames,
                                  device=model_device(model), callback=callback, stats=stats):
        z_id, z_lnd = model.encode_features(crops, batch_size=batch_size)
        file.write("crops", rows.start, crops)
        file.write("z_id", rows.start, z_id)
        file.write("z_lnd", rows.start, z_lnd)
        total += z_id.detach().double().sum(dim=0).cpu()
        count += len(z_id)
        trim_heap()
    if count != file.frames:
        raise RuntimeError(f"{path} gave {count} face crops on the second pass but the tracks have {file.frames}.")
    identity = (total / count).float()
    file.write("identity", 0, identity)
    return identity


def invert_file(
    model,
    file: LatentFile,
    identity: torch.Tensor,
    *,
    steps: int,
    batch_size: int = DEFAULT_CPU_BATCH,
    chunk_frames: int = 16,
    callback: Optional[ProgressCallback] = None,
    workers: Workers = Workers(),
) -> None:
    """x_T of every crop in ``file`` by DDIM inversion with ``identity`` [512], written row by row.

    Crops are read a chunk ahead in a worker thread; ``callback`` counts UNet calls. With several
    ``workers`` (torchrun) the chunks are dealt round robin; each process inverts its own (the same
    chunks and batches as one process, so the same numbers) and the first one, which writes the file,
    receives the others' x_T in order.
    """
    counter = _CallCounter(callback, _calls(file.frames, chunk_frames, batch_size, steps - 1))
    chunks = list(batches(file.frames, chunk_frames))
    own = [k for k in range(len(chunks)) if workers.owner(k) == workers.rank]
    if workers.distributed:
        log.info("process %d of %d: inverting crop chunks %s of %d", workers.rank, workers.world, own, len(chunks))
    reads = ((k, file.read("crops", chunks[k]), file.read("z_lnd", chunks[k])) for k in own)
    with Background(reads, name="dva-read") as background:
        ahead = iter(background)
        for k, rows in enumerate(chunks):
            if workers.owner(k) == workers.rank:
                _, crops, z_lnd = next(ahead)
                x_T = model.invert(crops, identity, z_lnd, steps=steps, batch_size=batch_size, callback=counter)
                if not workers.is_root:
                    workers.send(x_T.float(), to=0)  # stored as float32 in the file either way
                    continue
            elif workers.is_root:
                x_T = workers.receive((rows.stop - rows.start, 3, file.image_size, file.image_size), torch.float32,
                                      source=workers.owner(k), device=torch.device("cpu"))
                counter.skip(_calls(rows.stop - rows.start, chunk_frames, batch_size, steps - 1))
            else:
                continue
            file.write("x_T", rows.start, x_T)


@dataclass(frozen=True)
class _Chunk:
    """One chunk of frames on its way to paste-back: frame ``positions``, their crop ``rows``, the
    edited crops [m, 3, S, S], the source crops (for the "release" composite) and the masks [m, 1, S, S]."""

    positions: range
    rows: slice
    edited: Optional[torch.Tensor]
    source: Optional[torch.Tensor]
    masks: Optional[torch.Tensor] = None


class TemporalMaskSmoother:
    """Temporal smoothing of the paste masks as they stream in, identical to smoothing the whole clip.

    ``push`` takes the next chunk (its spatial masks in ``masks``) and returns the chunks whose
    smoothing window is complete, in order, with smoothed masks; ``flush`` returns the rest. It holds
    the masks of the chunks waiting plus ``temporal_radius(sigma)`` frames before them.
    frame_numbers: [M] source frame number of every crop row of the clip (runs split the smoothing).
    """

    def __init__(self, sigma: float, frame_numbers: Sequence[int]) -> None:
        self.sigma, self.radius = sigma, temporal_radius(sigma)
        self.count = len(frame_numbers)
        self.run_start, self.run_stop = run_bounds(frame_numbers) if self.count else (np.zeros(0), np.zeros(0))
        self.pending: deque = deque()
        self.window: Optional[torch.Tensor] = None  # spatial masks of rows first..first+len-1
        self.first = 0

    def push(self, chunk: _Chunk) -> list:
        if self.sigma <= 0:
            return [chunk]
        if chunk.masks is not None and len(chunk.masks):
            self.window = chunk.masks if self.window is None else torch.cat([self.window, chunk.masks])
        self.pending.append(chunk)
        return self._ready(final=False)

    def flush(self) -> list:
        return self._ready(final=True) if self.sigma > 0 else []

    def _ready(self, *, final: bool) -> list:
        known = self.first + (0 if self.window is None else len(self.window))  # rows with a spatial mask
        out = []
        while self.pending:
            chunk = self.pending[0]
            if not final and known < min(chunk.rows.stop + self.radius, self.count):
                break
            self.pending.popleft()
            if chunk.rows.stop > chunk.rows.start:
                rows = np.arange(chunk.rows.start, chunk.rows.stop)
                smoothed = smooth_rows(self.window, self.first, rows, self.run_start, self.run_stop, self.sigma)
                chunk = _Chunk(chunk.positions, chunk.rows, chunk.edited, chunk.source, smoothed.clamp(0.0, 1.0))
            out.append(chunk)
        if self.window is not None:  # drop the masks no waiting chunk can reach
            next_row = self.pending[0].rows.start if self.pending else known
            drop = max(0, min(next_row - self.radius - self.first, len(self.window)))
            self.window, self.first = self.window[drop:], self.first + drop
        return out


def paste_chunk(
    frames: torch.Tensor, faces: Sequence[FaceTracks], chunks: Sequence[_Chunk], *, composite: str,
    device: torch.device,
) -> torch.Tensor:
    """Paste one chunk of frames [n, H, W, 3] uint8 with each person's edited crops, in order (a later
    person covers an earlier one where they overlap) -> [n, H, W, 3] float32 in [0, 1] on ``device``.
    ``faces[k]`` and ``chunks[k]`` are person k's tracks and chunk; a frame without any face comes back
    unchanged, and so does every pixel outside the people's paste masks."""
    work = frames.to(device).float() / 255.0
    for person, chunk in zip(faces, chunks):
        if chunk.edited is None:
            continue
        positions = np.arange(chunk.positions.start, chunk.positions.stop)
        rows = crop_rows(person.has_face) - chunk.rows.start  # frame -> row of this chunk's crops (< 0: no face)
        work, _ = paste_frames(work, positions, rows, chunk.edited, chunk.masks, person.quads, crops=chunk.source,
                               composite=composite)
    return work


def _smoothed(chunks: Iterator[_Chunk], smoother: TemporalMaskSmoother) -> Iterator[_Chunk]:
    """``chunks`` with their masks smoothed in time, in order (each waits for its window)."""
    for chunk in chunks:
        yield from smoother.push(chunk)
    yield from smoother.flush()


def _edit_chunks(model, file: LatentFile, faces: FaceTracks, target: torch.Tensor, *, paste: PasteConfig,
                 batch_size: int, chunk_frames: int, counter, on_edited,
                 workers: Workers = Workers()) -> Iterator[_Chunk]:
    """Decode and mask the crops of every chunk of frames (model work, in the caller's thread); with
    several ``workers`` the chunks ``workers.owner`` gives to another process arrive decoded from it
    (``decode_for_first``)."""
    need_source = paste.composite == "release"

    def read(k: int, positions: range):
        rows = faces.crop_rows(positions)
        if rows.stop == rows.start:
            return positions, rows, None, None, None
        if workers.owner(k) != workers.rank:  # decoded by another process: only the source crops here
            return positions, rows, None, None, file.read("crops", rows)
        return positions, rows, file.read("x_T", rows), file.read("z_lnd", rows), file.read("crops", rows)

    reads = (read(k, range(p, min(p + chunk_frames, len(faces.indices))))
             for k, p in enumerate(range(0, len(faces.indices), chunk_frames)))
    with Background(reads, name="dva-read") as chunks:
        for k, (positions, rows, x_T, z_lnd, source) in enumerate(chunks):
            if rows.stop == rows.start:
                yield _Chunk(positions, rows, None, None)
                continue
            if x_T is not None:
                edited = model.decode(x_T, target, z_lnd, steps=file.steps, batch_size=batch_size, callback=counter)
            else:
                edited = workers.receive((rows.stop - rows.start, 3, file.image_size, file.image_size), torch.float32,
                                         source=workers.owner(k), device=model_device(model))
                counter.skip(-(-(rows.stop - rows.start) // batch_size) * file.steps)
            source_labels = model.parse(source, batch_size=batch_size)
            edited_labels = model.parse(edited, batch_size=batch_size) if paste.union_edited else None
            masks = spatial_masks(source_labels, edited_labels, config=paste)
            if on_edited is not None:
                on_edited(rows, edited)
            yield _Chunk(positions, rows, edited, source if need_source else None, masks)


def decode_for_first(model, people: Sequence["PersonEdit"], *, batch_size: int, chunk_frames: int,
                     workers: Workers) -> None:
    """Another process's share of ``render_people`` under torchrun: decode the chunks of frames that
    ``workers.owner`` gives it (the same chunks and batches as one process), each chunk for every person
    in order, and send the edited crops [m, 3, S, S] float32 to the first process, which receives them in
    that same order (chunk by chunk, person by person), parses, pastes and writes them."""
    total = len(people[0].faces.indices)
    own = [k for k in range(-(-total // chunk_frames)) if workers.owner(k) == workers.rank]
    log.info("process %d of %d: decoding frame chunks %s", workers.rank, workers.world, own)
    for k in own:
        for person in people:
            rows = person.faces.crop_rows(range(k * chunk_frames, min((k + 1) * chunk_frames, total)))
            if rows.stop > rows.start:
                edited = model.decode(person.file.read("x_T", rows), person.target, person.file.read("z_lnd", rows),
                                      steps=person.file.steps, batch_size=batch_size)
                workers.send(edited, to=0)


@dataclass(frozen=True)
class PersonEdit:
    """One person's part of a render: their ``faces`` (tracks over the clip's frames), their encoding
    ``file`` and the identity ``target`` [512] their crops are decoded with."""

    faces: FaceTracks
    file: LatentFile
    target: torch.Tensor
    on_edited: Optional[Callable[[slice, torch.Tensor], None]] = None


def render_video(
    path: PathLike,
    out_path: PathLike,
    faces: FaceTracks,
    file: LatentFile,
    model,
    target: torch.Tensor,
    *,
    on_edited: Optional[Callable[[slice, torch.Tensor], None]] = None,
    **options,
) -> Path:
    """Pass 3 for one face: ``render_people`` with one ``PersonEdit``. ``on_edited(rows, crops)`` sees
    each chunk of edited crops ([m, 3, S, S] in [-1, 1])."""
    return render_people(path, out_path, [PersonEdit(faces, file, target, on_edited)], model, **options)


def render_people(
    path: PathLike,
    out_path: PathLike,
    people: Sequence[PersonEdit],
    model,
    *,
    selection: FrameSelection = FrameSelection(),
    paste: PasteConfig = PasteConfig(),
    batch_size: int = DEFAULT_CPU_BATCH,
    chunk_frames: int = 16,
    crf: int = 18,
    lossless: bool = False,
    decode_callback: Optional[ProgressCallback] = None,
    paste_callback: Optional[ProgressCallback] = None,
    stats: Optional[QueueStats] = None,
    workers: Workers = Workers(),
) -> Path:
    """Pass 3: decode every person's crops with their target identity, paste them into the frames in the
    order of ``people`` (a later person covers an earlier one where they overlap), write ``out_path``.

    All people's tracks cover the same frames. The output has the selected frames, the source size,
    fps / stride and the audio of the selected time range; nothing appears at ``out_path`` unless it is
    complete. Pixels outside every paste mask keep the source's values. ``decode_callback`` counts UNet
    calls, ``paste_callback`` frames written; either may raise to cancel (the workers stop first).
    With several ``workers`` (torchrun; this is the first process) the others decode their chunks
    (``decode_for_first``).
    """
    limit_heap_growth()
    first = people[0].faces
    info, total = first.info, len(first.indices)
    assert all(p.faces.indices == first.indices for p in people), "the people's tracks cover other frames"
    assert all(p.file.frames == int(p.faces.has_face.sum()) for p in people), "a latent file and its tracks disagree"
    device = model_device(model)
    starts = range(0, total, chunk_frames)
    calls = sum(-(-(rows.stop - rows.start) // batch_size) * p.file.steps for p in people
                for rows in (p.faces.crop_rows(range(s, min(s + chunk_frames, total))) for s in starts))
    counter = _CallCounter(decode_callback, calls)
    times = frame_times(path)  # [frame_count] seconds: output timing and audio follow the source's clock
    source_frames = np.asarray(first.indices)
    faces = [p.faces for p in people]
    with VideoWriter(out_path, fps=info.fps / selection.stride, width=info.width, height=info.height,
                     audio_from=path if info.has_audio else None,
                     audio_window_s=audio_window(info, first.indices, times),
                     crf=crf, lossless=lossless) as writer, \
            decoded_chunks(path, selection, chunk_frames, stats=stats) as decoded:
        frames_in = iter(decoded)

        def write(item) -> None:
            writer.write(item[0], times=item[1])
            trim_heap()  # the chunk's frames are freed by now (see dva_model.host_memory)

        with Sink(write, name="dva-encode", stats=stats) as encoder:

            def paste_one(chunks: tuple) -> None:
                _, frames = next(frames_in)
                positions = chunks[0].positions
                pasted = paste_chunk(frames[: len(positions)], faces, chunks, composite=paste.composite, device=device)
                encoder.put((to_uint8(pasted), times[source_frames[np.arange(positions.start, positions.stop)]]))

            with Sink(paste_one, name="dva-paste", stats=stats) as paster:
                streams = [_smoothed(_edit_chunks(model, p.file, p.faces, p.target, paste=paste, batch_size=batch_size,
                                                  chunk_frames=chunk_frames, counter=counter, on_edited=p.on_edited,
                                                  workers=workers),
                                     TemporalMaskSmoother(paste.temporal_sigma, p.faces.face_frame_numbers))
                           for p in people]
                for chunks in zip(*streams):  # one chunk of the same frames from every person
                    paster.put(chunks)
                    report(paste_callback, writer.frames_written, total)
        report(paste_callback, writer.frames_written, total)
    return Path(out_path)
