"""Training frames: a folder of aligned clips, read in a seeded, rank-sharded, resumable order.

Layout: ``<root>/<video>/<frame>.png`` (or .jpg/.jpeg), one sub-folder per clip holding its square
aligned crops (section 6 of the method). Raw videos are aligned once by the face pipeline into such a
folder (``align_videos``), which later runs reuse. A training item, as published, is several frames of
ONE video; each process (rank) of a data-parallel run draws different videos.

Every random choice is a pure function of (seed, step, rank): which videos a rank sees (a fresh
permutation of all videos per epoch, dealt out round-robin over the ranks, like DistributedSampler),
which frames of each video, and which are flipped. A run stopped at step s and resumed therefore
reads exactly the frames an uninterrupted run reads, without storing any loader state.
"""

import functools
import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from dva_model.face.align import AlignConfig
from dva_model.errors import NoFaceError, UserError
from dva_model.formats.image_io import IMAGE_SUFFIXES
from dva_model.face.tracking import TrackConfig
from dva_model.progress import ProgressCallback, report

if TYPE_CHECKING:
    from dva_model.face.landmarks import FaceLandmarker

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
ALIGNED_MARKER = "source.json"  # written last into a cached clip folder: the clip is complete

FLIP_PROBABILITY = 0.5  # random horizontal flip of each frame, as published
_SEED_BITS = 63


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """How frames are drawn.

    frames_per_video: frames of one video in a training item (the release: 4 per GPU).
    videos_per_rank: items per process and step; a step's batch is videos_per_rank * frames_per_video frames.
    flip: random horizontal flip of each frame with probability 0.5.
    seed: seeds the video order, the frame choice and the flips.
    """

    frames_per_video: int = 4
    videos_per_rank: int = 1
    flip: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.frames_per_video < 1 or self.videos_per_rank < 1:
            raise ValueError(
                f"frames_per_video and videos_per_rank must be at least 1, got {self.frames_per_video} and "
                f"{self.videos_per_rank}."
            )


@dataclass(frozen=True)
class Clip:
    """One video's aligned frames, in file-name order."""

    name: str
    frames: Tuple[Path, ...]


def list_clips(*roots: Path) -> List[Clip]:
    """Every ``<root>/<video>/`` holding frames, over all ``roots``, sorted by name.

    Hidden folders and folders without frames are skipped (the latter with a warning). UserError when
    no clip is found or two clips share a name.
    """
    clips = []
    for root in map(Path, roots):
        if not root.is_dir():
            raise FileNotFoundError(
                f"Training folder {root} does not exist; pass a folder of clip folders (<video>/<frame>.png)."
            )
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            frames = tuple(sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
            if frames:
                clips.append(Clip(folder.name, frames))
            else:
                log.warning("Skipping %s: it holds no %s frames.", folder, "/".join(IMAGE_SUFFIXES))
    if not clips:
        raise UserError(
            f"No clips in {', '.join(map(str, roots))}: expected sub-folders <video>/ holding aligned frames "
            f"({', '.join(IMAGE_SUFFIXES)}) or video files ({', '.join(VIDEO_SUFFIXES)})."
        )
    names = [clip.name for clip in clips]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise UserError(
            f"Several clips are named {', '.join(duplicates)}; rename the folders or videos so names are unique."
        )
    return sorted(clips, key=lambda clip: clip.name)


def list_videos(root: Path) -> List[Path]:
    """The video files directly inside ``root`` (by suffix), sorted by name."""
    return sorted(p for p in Path(root).iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)


def align_videos(
    videos: Sequence[Path],
    cache: Path,
    *,
    landmarker: "FaceLandmarker",
    align: AlignConfig = AlignConfig(),
    track: TrackConfig = TrackConfig(),
    callback: Optional[ProgressCallback] = None,
) -> Path:
    """Align each video once into ``cache/<video stem>/<frame>.png`` (a clip folder for ``list_clips``).

    A clip folder is reused while its marker matches the video (path, size, modification time) and the
    crop settings; otherwise it is rebuilt. Frames without a face get no crop; a video without any face
    is left out with a warning (its folder stays empty). ``callback(done, total)`` counts videos. Returns ``cache``.
    """
    from dva_model.formats.files import write_atomically
    from dva_model.formats.image_io import write_crops
    from dva_model.pipeline import align_video

    for done, video in enumerate(videos, start=1):
        target = Path(cache) / video.stem
        stat = video.stat()
        source = {"video": str(video.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                  "crop_size": align.size, "method": align.method, "sigma_centre": align.sigma_centre,
                  "sigma_axes": align.sigma_axes, "max_gap": track.max_gap}
        marker = target / ALIGNED_MARKER
        if marker.is_file() and json.loads(marker.read_text()) == source:
            report(callback, done, len(videos))
            continue
        shutil.rmtree(target, ignore_errors=True)
        try:
            clip = align_video(video, landmarker, align=align, track=track)
            names = [f"{clip.indices[row]:06d}" for row in clip.face_rows]
            write_crops(target, names, clip.crops)
            log.info("aligned %s: %d of %d frames have a face", video.name, len(names), len(clip.indices))
        except NoFaceError:  # remembered (empty folder + marker), so later runs do not search again
            log.warning("No face in any frame of %s; it is left out of training.", video)
        write_atomically(marker, lambda tmp: tmp.write_text(json.dumps(source)))
        report(callback, done, len(videos))
    return Path(cache)


def derive_seed(*parts) -> int:
    """A 63-bit seed that depends on every part (ints and strings), stable across runs and machines."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> (64 - _SEED_BITS)


def _generator(*parts) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, num_videos: int, world_size: int) -> Tuple[int, ...]:
    """This epoch's permutation of the videos, padded by wrapping around to a multiple of world_size."""
    order = torch.randperm(num_videos, generator=_generator(seed, "videos", epoch)).tolist()
    padded_length = -(-num_videos // world_size) * world_size
    return tuple((order * (padded_length // num_videos + 1))[:padded_length])


def videos_for_step(step: int, *, rank: int, world_size: int, num_videos: int, config: DataConfig) -> List[int]:
    """Indices of the videos rank ``rank`` trains on at ``step`` (``config.videos_per_rank`` of them).

    Rank r walks its share order[r::world_size] of each epoch's permutation; ranks never share a video
    within an epoch unless there are fewer videos than ranks.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in 0..{world_size - 1}, got {rank}.")
    per_rank = -(-num_videos // world_size)  # videos each rank sees per epoch
    picks = []
    for k in range(step * config.videos_per_rank, (step + 1) * config.videos_per_rank):
        epoch, position = divmod(k, per_rank)
        order = _epoch_order(config.seed, epoch, num_videos, world_size)
        picks.append(order[rank + position * world_size])
    return picks


def load_frame(path: Path, image_size: int) -> Tensor:
    """Read an aligned crop: [3, S, S] float32 in [-1, 1], resized (antialiased bilinear) to S = image_size."""
    with Image.open(path) as image:
        if image.width != image.height:
            raise UserError(
                f"Frame {path} is {image.width}x{image.height}; training frames must be square aligned crops."
            )
        image = image.convert("RGB")
        if image.width != image_size:
            image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(np.asarray(image).copy())  # [S, S, 3] uint8
    return pixels.permute(2, 0, 1).float() / 127.5 - 1.0


class StepFrames(Dataset):
    """Item ``step`` = (frames [V * F, 3, S, S] float32 in [-1, 1], keys) for one rank.

    V = videos_per_rank, F = frames_per_video, S = image_size. Frames of one video are adjacent. ``keys``
    names each frame and its flip ("<video>/<file>" or "<video>/<file>#flip"), e.g. for caching encodings.
    Index it with any range of steps (a DataLoader sampler such as ``range(start, stop)``).
    """

    def __init__(self, clips: Sequence[Clip], *, image_size: int, config: DataConfig, rank: int, world_size: int):
        if not clips:
            raise ValueError("StepFrames needs at least one clip.")
        self.clips, self.image_size, self.config = list(clips), image_size, config
        self.rank, self.world_size = rank, world_size
        if len(self.clips) < world_size:
            log.warning("%d videos for %d processes: some processes will train on the same videos.",
                        len(self.clips), world_size)

    def __getitem__(self, step: int) -> Tuple[Tensor, Tuple[str, ...]]:
        frames, keys = [], []
        videos = videos_for_step(step, rank=self.rank, world_size=self.world_size,
                                 num_videos=len(self.clips), config=self.config)
        for slot, video in enumerate(videos):
            clip = self.clips[video]
            generator = _generator(self.config.seed, "frames", step, self.rank, slot)
            count, wanted = len(clip.frames), self.config.frames_per_video
            if count >= wanted:
                chosen = torch.randperm(count, generator=generator)[:wanted]
            else:  # short clip: draw with replacement rather than dropping it
                chosen = torch.randint(0, count, (wanted,), generator=generator)
            flips = torch.rand(wanted, generator=generator) < FLIP_PROBABILITY
            for index, flip in zip(chosen.tolist(), flips.tolist()):
                flip = flip and self.config.flip
                frame = load_frame(clip.frames[index], self.image_size)
                frames.append(frame.flip(-1) if flip else frame)
                keys.append(f"{clip.name}/{clip.frames[index].name}" + ("#flip" if flip else ""))
        return torch.stack(frames), tuple(keys)


def preview_frames(clips: Sequence[Clip], *, count: int, image_size: int) -> Tensor:
    """The first frame of each of the first ``count`` clips: [min(count, len(clips)), 3, S, S] in [-1, 1]."""
    return torch.stack([load_frame(clip.frames[0], image_size) for clip in clips[:count]])
