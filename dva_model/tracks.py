"""A clip's face tracks: where the face is in every selected frame, and the aligned crops cut from them.

The tracks are small (a quad and two flags per frame) and are kept in memory for the whole clip;
the frames and crops are not. Finding them takes one decoding pass (detect and landmark every
frame), then the quads are smoothed over the WHOLE track (so the alignment never restarts at a chunk
boundary), and a second pass warps the frames to crops chunk by chunk (``iter_crops``).
Decoding runs in a worker thread ahead of detection and warping (``dva_model.workers``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator, Optional, Union

import numpy as np
import torch

from dva_model.face.align import AlignConfig, align_frames, compute_quads
from dva_model.face.landmarks import FaceLandmarker
from dva_model.face.tracking import FaceTrack, TrackConfig, track_faces
from dva_model.formats.video import DEFAULT_CHUNK_FRAMES, FrameSelection, VideoInfo, iter_frames, probe
from dva_model.host_memory import limit_heap_growth
from dva_model.progress import ProgressCallback, report
from dva_model.workers import Background, QueueStats, background_map

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True, kw_only=True)
class FaceTracks:
    """Where the face is in every selected frame of a video (small: kept for the whole clip).

    indices: the selected source frame numbers (N of them). track: the face track over those N frames.
    quads: [N, 4, 2] float64 pixel-index quads, smoothed over the whole clip (NaN where ``has_face`` is
    False). has_face: [N] bool. config: how the crops are cut.
    """

    info: VideoInfo
    indices: range
    track: FaceTrack
    quads: np.ndarray
    has_face: np.ndarray
    config: AlignConfig

    @property
    def face_rows(self) -> np.ndarray:
        """Positions (0..N-1) of the frames that have a face: crop row r is frame ``face_rows[r]``."""
        return np.flatnonzero(self.has_face)

    @property
    def face_frame_numbers(self) -> list[int]:
        """Source frame number of each crop row."""
        return [self.indices[row] for row in self.face_rows]

    @property
    def selection(self) -> FrameSelection:
        """The frame selection that gives ``indices`` (for decoding the frames again)."""
        return FrameSelection(start=self.indices.start, stride=self.indices.step, max_frames=len(self.indices))

    def crop_rows(self, positions: range) -> slice:
        """The crop rows of the frames at ``positions`` (a run of consecutive positions)."""
        before = int(self.has_face[: positions.start].sum())
        return slice(before, before + int(self.has_face[positions.start: positions.stop].sum()))


@dataclass(frozen=True, kw_only=True)
class AlignedClip(FaceTracks):
    """``FaceTracks`` plus every crop in memory, for short clips and in-memory frames.

    crops: [M, 3, S, S] float32 in [-1, 1] on the CPU, one per frame with a face (M = has_face.sum()),
    in frame order.
    """

    crops: torch.Tensor


def smoothed_quads(face_track: FaceTrack, align: AlignConfig) -> tuple[np.ndarray, np.ndarray]:
    """Quads [N, 4, 2] smoothed over the whole track (NaN without a face) and the face flags [N]."""
    quads = compute_quads(face_track.landmarks, face_track.has_face, config=align)
    return quads, ~np.isnan(quads).any(axis=(1, 2))


def decoded_chunks(path: PathLike, selection: FrameSelection, chunk_frames: int, *,
                   stats: Optional[QueueStats] = None) -> Background:
    """``(indices, frames [n, H, W, 3] uint8)`` chunks of the selected frames, decoded in a worker thread."""
    return Background(iter_frames(path, selection=selection, chunk_size=chunk_frames, dtype=torch.uint8),
                      name="dva-decode", stats=stats)


def track_video(
    path: PathLike,
    landmarker: FaceLandmarker,
    *,
    selection: FrameSelection = FrameSelection(),
    align: AlignConfig = AlignConfig(),
    track: TrackConfig = TrackConfig(),
    chunk_size: int = DEFAULT_CHUNK_FRAMES,
    callback: Optional[ProgressCallback] = None,
) -> FaceTracks:
    """Pass 1: detect and landmark one tracked face in every selected frame, then smooth its quads.

    Raises ``NoFaceError`` when no frame has a face; frames in long gaps are flagged (``has_face``).
    """
    limit_heap_growth()
    info = probe(path)
    indices = selection.indices(info.frame_count)
    with decoded_chunks(path, selection, chunk_size) as chunks:
        face_track = track_faces((frames.numpy() for _, frames in chunks), landmarker, config=track,
                                 total=len(indices), callback=callback, source=str(path), frame_numbers=indices)
    indices = indices[: len(face_track.detected)]  # a file may hold fewer frames than its header says
    return tracks_of(info, indices, face_track, align)


def iter_crops(
    path: PathLike,
    faces: FaceTracks,
    *,
    selection: FrameSelection = FrameSelection(),
    chunk_size: int = DEFAULT_CHUNK_FRAMES,
    device: Union[str, torch.device] = "cpu",
    callback: Optional[ProgressCallback] = None,
    stats: Optional[QueueStats] = None,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Pass 2: ``(rows, crops)`` chunk by chunk, ``crops`` [m, 3, S, S] float32 in [-1, 1] on ``device``
    for crop rows ``rows`` (frames without a face give none). Decoding and warping run in worker
    threads, at most a few chunks ahead of the consumer; ``callback`` counts frames."""
    total = len(faces.indices)

    def warp(item) -> tuple[range, slice, torch.Tensor]:
        chunk_indices, frames = item
        start = faces.indices.index(chunk_indices[0])
        positions = range(start, min(start + len(chunk_indices), total))
        keep = np.flatnonzero(faces.has_face[positions.start: positions.stop])
        picked = frames[torch.as_tensor(keep)].to(device).float() / 255.0  # uint8 -> [0, 1]
        crops = align_frames(picked, faces.quads[positions.start + keep], config=faces.config) if len(keep) else (
            torch.zeros(0, 3, faces.config.size, faces.config.size, device=device))
        return positions, faces.crop_rows(positions), crops

    with decoded_chunks(path, selection, chunk_size, stats=stats) as chunks, \
            background_map(warp, chunks, name="dva-warp", stats=stats) as warped:
        for positions, rows, crops in warped:
            if rows.stop > rows.start:
                yield rows, crops
            report(callback, positions.stop, total)
            if positions.stop >= total:
                break  # more frames than the tracking pass saw (a file that changed): stop at its count


def align_video(
    path: PathLike,
    landmarker: FaceLandmarker,
    *,
    selection: FrameSelection = FrameSelection(),
    align: AlignConfig = AlignConfig(),
    track: TrackConfig = TrackConfig(),
    chunk_size: int = DEFAULT_CHUNK_FRAMES,
    device: Union[str, torch.device] = "cpu",
    stage_progress=None,
) -> AlignedClip:
    """``track_video`` + every crop in memory (two decoding passes); for the ``align`` command and
    short clips (the edit streams its crops to a latent file instead)."""
    stage = stage_progress or (lambda _name: None)
    faces = track_video(path, landmarker, selection=selection, align=align, track=track, chunk_size=chunk_size,
                        callback=stage("faces"))
    crops = [c.cpu() for _, c in iter_crops(path, faces, selection=selection, chunk_size=chunk_size, device=device,
                                             callback=stage("crop"))]
    return with_crops(faces, crops)


def with_crops(faces: FaceTracks, crops: list) -> AlignedClip:
    """``faces`` plus its crops (a list of [m, 3, S, S] chunks in row order) as one ``AlignedClip``."""
    size = faces.config.size
    fields = {name: getattr(faces, name) for name in ("info", "indices", "track", "quads", "has_face", "config")}
    return AlignedClip(**fields, crops=torch.cat(crops) if crops else torch.zeros(0, 3, size, size))


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
    count = len(frames)
    chunks = (frames[i: i + chunk_size] for i in range(0, count, chunk_size))
    face_track = track_faces(chunks, landmarker, config=track, total=count, callback=callback, source="the frames")
    return crop_track_in_memory(frames, face_track, align=align, chunk_size=chunk_size, device=device)


def crop_track_in_memory(
    frames: torch.Tensor,
    face_track: FaceTrack,
    *,
    align: AlignConfig = AlignConfig(),
    chunk_size: int = DEFAULT_CHUNK_FRAMES,
    device: Union[str, torch.device] = "cpu",
) -> AlignedClip:
    """Smoothed quads and crops of one face track (any tracker's) over frames in memory, [N, H, W, 3] float
    in [0, 1]; the clip's info carries no file, fps or audio."""
    count, height, width, _ = frames.shape
    quads, has_face = smoothed_quads(face_track, align)
    rows = np.flatnonzero(has_face)
    crops = [align_frames(frames[torch.as_tensor(part)].to(device), quads[part], config=align).cpu()
             for part in (rows[i: i + chunk_size] for i in range(0, len(rows), chunk_size))]
    info = VideoInfo(path="", frame_count=count, fps=Fraction(0), width=width, height=height, codec="",
                     has_audio=False, audio_codec=None)
    faces = FaceTracks(info=info, indices=range(count), track=face_track, quads=quads, has_face=has_face, config=align)
    return with_crops(faces, crops)


def tracks_of(info: VideoInfo, indices: range, face_track: FaceTrack, align: AlignConfig = AlignConfig()) -> FaceTracks:
    """``FaceTracks`` of one face track (any tracker's, e.g. one person of several) over the frames ``indices``
    of a video: its quads smoothed over the whole track."""
    quads, has_face = smoothed_quads(face_track, align)
    return FaceTracks(info=info, indices=indices, track=face_track, quads=quads, has_face=has_face, config=align)
