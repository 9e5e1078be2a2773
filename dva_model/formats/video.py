"""Video in and out with PyAV: probe, chunked frame decoding, and an MP4 (H.264) writer with audio.

Frames leave this module as ``[N, H, W, 3]`` (the video's own layout) float32 in [0, 1] or uint8
in 0..255, in chunks, so a long or HD clip never holds every float frame at once. The writer encodes
at the source fps, copies the source's audio track when MP4 can hold it (re-encoding it to AAC when
not), and writes to a temporary file that is renamed into place only once the video is complete: a
failed or cancelled run never leaves a partial output file.

What phones and editors produce:

- Rotation: a clip whose display matrix (or legacy ``rotate`` tag) says "show me turned" is decoded
  upright (every frame turned by ``VideoInfo.rotation``), so faces are found and edited the right way
  up; ``width``/``height`` are the upright size. Written videos are upright pixels with no rotation
  tag, so every player shows them the same way.
- Variable frame rate: ``frame_times`` gives each frame's own timestamp (pts x time_base); audio
  windows and the writer's output timing use it instead of ``index / fps``.
- Odd sizes: H.264 4:2:0 (yuv420p, what browsers and phones play) needs even sizes, so the writer pads
  an odd width or height by repeating the last column or row (one pixel); the lossless (RGB) mode keeps
  the exact size.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch

from dva_model.errors import UserError
from dva_model.formats.image_io import MAX_UINT8, to_uint8

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

BYTES_PER_FLOAT = 4
RGB_CHANNELS = 3
DEFAULT_CHUNK_FRAMES = 16
# A chunk holds at most this much float32 frame data, whatever chunk_size asks: 16 frames of 640x360
# fit, 1080p frames come 5 at a time and 4K ones (~95 MiB each) one at a time, so the full-resolution
# work (paste back makes several float copies of a chunk) stays under a gigabyte at any frame size.
MAX_CHUNK_BYTES = 128 * 2**20
DEFAULT_CRF = 18  # visually lossless for x264
MAX_CRF = 51  # x264's crf range is 0..51
TIME_BASE = Fraction(1, 90_000)  # output timestamps for frames written with their own times (MPEG's clock)
AAC_BITRATE = 192_000


@dataclass(frozen=True, kw_only=True)
class VideoInfo:
    """What ``probe`` learns about a video file without decoding its frames."""

    path: str
    frame_count: int  # frames in the video stream
    fps: Fraction  # average frame rate
    width: int
    height: int
    codec: str  # video codec name, e.g. "h264"
    has_audio: bool
    audio_codec: Optional[str]  # None when there is no audio track
    rotation: int = 0  # degrees counter-clockwise (0, 90, 180, 270) that turn a stored frame upright

    @property
    def duration_s(self) -> float:
        """Length of the video stream in seconds, ``frame_count / fps``."""
        return float(self.frame_count / self.fps) if self.fps else 0.0

    def float_bytes(self, frames: Optional[int] = None) -> int:
        """Bytes that ``frames`` (default: all) decoded frames take as float32 [N, H, W, 3]."""
        count = self.frame_count if frames is None else frames
        return count * self.height * self.width * RGB_CHANNELS * BYTES_PER_FLOAT


@dataclass(frozen=True, kw_only=True)
class FrameSelection:
    """Which frames of a video to use: ``range(start, stop, stride)``, then at most ``max_frames``.

    ``stop`` is exclusive and ``None`` means the end of the video.
    """

    start: int = 0
    stop: Optional[int] = None
    stride: int = 1
    max_frames: Optional[int] = None

    def __post_init__(self) -> None:
        if self.start < 0:
            raise ValueError(f"Frame start must be 0 or more, got {self.start}.")
        if self.stop is not None and self.stop <= self.start:
            raise ValueError(f"Frame stop ({self.stop}) must be greater than start ({self.start}).")
        if self.stride < 1:
            raise ValueError(f"Frame stride must be 1 or more, got {self.stride}.")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"Frame cap must be 1 or more (or unset), got {self.max_frames}.")

    def indices(self, frame_count: int) -> range:
        """The selected source frame indices of a video with ``frame_count`` frames."""
        stop = frame_count if self.stop is None else min(self.stop, frame_count)
        selected = range(self.start, max(stop, self.start), self.stride)
        if self.max_frames is not None:
            selected = selected[: self.max_frames]
        return selected


def _ffmpeg_reason(error: Exception) -> str:
    """FFmpeg's short reason (e.g. "Invalid data found when processing input") without errno and path."""
    reason = getattr(error, "strerror", None) or str(error)
    return reason[0].lower() + reason[1:] if reason else "unknown error"


def _open_input(path: PathLike):
    """Open ``path`` with PyAV, turning every failure into one-sentence ``UserError``."""
    import av

    path = Path(path)
    if not path.is_file():
        raise UserError(f"Video file {path} does not exist; check the path.")
    if path.stat().st_size == 0:
        raise UserError(f"Video file {path} is empty (0 bytes); pass a real video file.")
    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError) as error:
        raise UserError(
            f"Cannot read {path} as a video ({_ffmpeg_reason(error)}); the file is corrupt or not a video."
        ) from error
    if not container.streams.video:
        container.close()
        raise UserError(f"{path} has no video stream; pass a video file.")
    return container


def _count_frames(container) -> int:
    """Count the video stream's packets (no decoding) when the container does not store a frame count."""
    stream = container.streams.video[0]
    count = sum(1 for packet in container.demux(stream) if packet.size > 0)
    container.seek(0)
    return count


def _quarter_turns(degrees: float, path: PathLike) -> int:
    """Counter-clockwise ``degrees`` -> 0..3 quarter turns; other angles are ignored with a warning."""
    turns = round(degrees / 90)
    if abs(degrees - 90 * turns) > 1:
        log.warning("%s asks to be shown turned by %.1f degrees; only quarter turns are applied.", path, degrees)
    return turns % 4


def _display_rotation(container, path: PathLike) -> int:
    """Degrees counter-clockwise (0, 90, 180, 270) that turn the stored frames upright.

    The display matrix (what phones write; FFmpeg gives it with each decoded frame) wins; the legacy
    ``rotate`` tag (clockwise degrees) is read when a container carries only that.
    """
    import av

    stream = container.streams.video[0]
    try:
        first = next(container.decode(stream), None)
    except av.error.FFmpegError as error:
        raise UserError(f"Cannot read {path} as a video ({_ffmpeg_reason(error)}); the file is corrupt.") from error
    finally:
        container.seek(0)
    if first is not None and first.rotation:
        return 90 * _quarter_turns(first.rotation, path)
    tag = next((value for key, value in stream.metadata.items() if key.lower() == "rotate"), None)
    try:
        return 90 * _quarter_turns(-float(tag), path) if tag else 0
    except ValueError:
        log.warning("%s has an unreadable rotate tag %r; it is ignored.", path, tag)
        return 0


def probe(path: PathLike) -> VideoInfo:
    """Read a video's frame count, fps, upright size, rotation and audio track; ``UserError`` for unreadable files."""
    import av

    container = _open_input(path)
    try:
        stream = container.streams.video[0]
        context = stream.codec_context
        fps = stream.average_rate or stream.guessed_rate or stream.base_rate
        try:
            frame_count = stream.frames or _count_frames(container)
        except av.error.FFmpegError as error:
            raise UserError(f"Cannot read {path} as a video ({_ffmpeg_reason(error)}); the file is corrupt.") from error
        rotation = _display_rotation(container, path)
        width, height = int(context.width), int(context.height)
        if rotation % 180:
            width, height = height, width
        audio = container.streams.audio[0] if container.streams.audio else None
        info = VideoInfo(
            path=str(path),
            frame_count=int(frame_count),
            fps=Fraction(fps) if fps else Fraction(0),
            width=width,
            height=height,
            codec=context.name,
            has_audio=audio is not None,
            audio_codec=audio.codec_context.name if audio is not None else None,
            rotation=rotation,
        )
    finally:
        container.close()
    if info.frame_count == 0 or info.width == 0 or info.height == 0:
        raise UserError(f"{path} contains no video frames; pass a video with at least one frame.")
    if not info.fps:
        raise UserError(f"{path} does not state a frame rate; re-encode it with a fixed fps.")
    return info


def frame_times(path: PathLike) -> np.ndarray:
    """Each frame's presentation time in seconds (pts x time_base), in display order: [frame_count] float64.

    Read from the packets (no decoding). A variable-frame-rate clip (phones, screen recordings) has
    uneven steps; where the container gives no timestamps, ``index / fps`` stands in.
    """
    import av

    info = probe(path)
    container = _open_input(path)
    try:
        stream = container.streams.video[0]
        try:
            stamps = [packet.pts for packet in container.demux(stream) if packet.size > 0]
        except av.error.FFmpegError as error:
            raise UserError(f"Cannot read {path} as a video ({_ffmpeg_reason(error)}); the file is corrupt.") from error
        time_base = stream.time_base
    finally:
        container.close()
    if len(stamps) != info.frame_count or any(pts is None for pts in stamps) or time_base is None:
        return np.arange(info.frame_count, dtype=np.float64) / float(info.fps)
    return np.sort(np.asarray(stamps, dtype=np.int64)).astype(np.float64) * float(time_base)


def _to_output(frames: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """uint8 [n, H, W, 3] -> the requested dtype (float in [0, 1] or uint8)."""
    tensor = torch.from_numpy(frames)
    if dtype == torch.uint8:
        return tensor
    return tensor.to(dtype).div_(MAX_UINT8)  # in place: one float copy of the chunk, not two


def iter_frames(
    path: PathLike,
    *,
    selection: FrameSelection = FrameSelection(),
    chunk_size: int = DEFAULT_CHUNK_FRAMES,
    dtype: torch.dtype = torch.float32,
) -> Iterator[tuple[range, torch.Tensor]]:
    """Decode the selected frames in chunks: yields ``(indices, frames)``.

    ``frames`` is ``[n, H, W, 3]`` RGB, float in [0, 1] (or uint8 0..255 for ``dtype=torch.uint8``);
    ``indices`` are the source frame numbers of that chunk (a slice of ``selection.indices``).
    A chunk has at most ``chunk_size`` frames and at most ``MAX_CHUNK_BYTES`` of float frames (fewer
    frames per chunk for 4K). Frames are turned upright by the video's rotation (``VideoInfo.rotation``).
    Decoding runs from the start of the file (frame-exact; seeking is not frame-exact in every container).
    """
    import av

    if chunk_size < 1:
        raise ValueError(f"Chunk size must be 1 or more, got {chunk_size}.")
    info = probe(path)
    chunk_size = max(1, min(chunk_size, MAX_CHUNK_BYTES // info.float_bytes(1)))
    wanted = selection.indices(info.frame_count)
    if len(wanted) == 0:
        raise UserError(
            f"The frame selection (start {selection.start}, stop {selection.stop}) is empty for {path}, "
            f"which has {info.frame_count} frames."
        )
    container = _open_input(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        buffer: list[np.ndarray] = []
        position = 0  # index into ``wanted`` of the next frame to keep
        try:
            for index, frame in enumerate(container.decode(stream)):
                if index < wanted[position]:
                    continue
                buffer.append(_upright(frame.to_ndarray(format="rgb24"), info.rotation))
                position += 1
                done = position == len(wanted)
                if len(buffer) == chunk_size or done:
                    yield wanted[position - len(buffer): position], _to_output(np.stack(buffer), dtype)
                    buffer = []
                if done:
                    return
        except av.error.FFmpegError as error:
            raise UserError(
                f"Decoding {path} failed at frame {wanted[position]} ({_ffmpeg_reason(error)}); the file is corrupt."
            ) from error
        if buffer:
            yield wanted[position - len(buffer): position], _to_output(np.stack(buffer), dtype)
        if position < len(wanted):
            log.warning("%s ended after %d of the %d selected frames.", path, position, len(wanted))
    finally:
        container.close()


def _upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """A stored frame [H, W, 3] turned ``rotation`` degrees counter-clockwise (as its display matrix asks)."""
    return np.ascontiguousarray(np.rot90(image, k=rotation // 90)) if rotation else image


def read_frames(
    path: PathLike,
    *,
    selection: FrameSelection = FrameSelection(),
    max_bytes: Optional[int] = None,
) -> tuple[torch.Tensor, VideoInfo]:
    """Decode all selected frames at once: ``[N, H, W, 3]`` float32 in [0, 1], plus the video's info.

    With ``max_bytes``, refuses (``UserError``) before decoding when the float frames would need more.
    """
    info = probe(path)
    count = len(selection.indices(info.frame_count))
    needed = info.float_bytes(count)
    if max_bytes is not None and needed > max_bytes:
        raise UserError(
            f"{count} frames of {info.width}x{info.height} need {needed / 2**30:.2f} GiB as float, more than "
            f"the {max_bytes / 2**30:.2f} GiB allowed; choose a shorter frame range, a stride or a frame cap."
        )
    chunks = [frames for _, frames in iter_frames(path, selection=selection)]
    return torch.cat(chunks), info


def even_size(width: int, height: int) -> tuple[int, int]:
    """The size a non-lossless output of ``width`` x ``height`` frames has: each rounded up to even."""
    return width + width % 2, height + height % 2


def _partial_path(path: Path) -> Path:
    """A hidden temporary name beside ``path`` with the same suffix (the muxer is chosen explicitly)."""
    return path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")


class VideoWriter:
    """MP4 (H.264) writer with the audio of a source video; use as a context manager.

    Frames go in through ``write(frames, times=...)`` as ``[n, H, W, 3]`` float in [0, 1] or uint8, at
    ``fps`` or at their own timestamps (seconds, for variable frame rate). ``lossless`` stores RGB
    exactly (libx264rgb, qp 0, any size): decoding the file gives back the written uint8 frames.
    Otherwise x264 at ``crf`` in yuv420p; an odd width or height is padded by one repeated pixel
    column or row (4:2:0 needs even sizes), so the file is ``encoded_size``.
    ``audio_from`` names a video whose first audio track is copied (or re-encoded to AAC) for the
    time window ``audio_window_s`` (default: all of it). Nothing appears at ``path`` until ``close``
    succeeds; an exception inside the ``with`` block removes the temporary file.
    """

    def __init__(
        self,
        path: PathLike,
        *,
        fps: Fraction,
        width: int,
        height: int,
        audio_from: Optional[PathLike] = None,
        audio_window_s: Optional[tuple[float, float]] = None,
        crf: int = DEFAULT_CRF,
        lossless: bool = False,
    ) -> None:
        import av

        if width < 1 or height < 1:
            raise ValueError(f"Video size must be positive, got {width}x{height}.")
        if not fps or fps <= 0:
            raise ValueError(f"Video fps must be positive, got {fps}.")
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise UserError(f"Output folder {self.path.parent} does not exist; create it first.")
        if not 0 <= crf <= MAX_CRF:
            raise UserError(f"The x264 quality (crf) must be {0}-{MAX_CRF}, got {crf}; 18 is visually lossless.")
        self.width, self.height = width, height
        self.lossless = lossless
        self.fps = Fraction(fps).limit_denominator(1_000_000)
        self._first_time: Optional[float] = None
        self._last_pts = -1
        self.audio_from = Path(audio_from) if audio_from is not None else None
        self.audio_window_s = audio_window_s
        self.frames_written = 0
        self._partial = _partial_path(self.path)
        self._container = None
        with self._naming_the_output():
            self._container = av.open(str(self._partial), mode="w", format="mp4")
        try:
            self._stream = self._add_video_stream(crf, lossless)
            # Every stream must exist before the first packet is written (the header goes out then).
            self._audio = _AudioTrack(self._container, self.audio_from) if self.audio_from else None
        except BaseException:
            self._abort()
            raise

    @property
    def encoded_size(self) -> tuple[int, int]:
        """(width, height) in the file: the frame size, rounded up to even unless lossless (4:2:0)."""
        return (self.width, self.height) if self.lossless else even_size(self.width, self.height)

    def _add_video_stream(self, crf: int, lossless: bool):
        """The H.264 stream: exact RGB when lossless, else yuv420p at the even ``encoded_size``."""
        if lossless:
            stream = self._container.add_stream("libx264rgb", rate=self.fps)
            stream.pix_fmt = "rgb24"
            stream.options = {"qp": "0", "preset": "medium"}
        else:
            stream = self._container.add_stream("libx264", rate=self.fps)
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf), "preset": "medium"}
            if self.encoded_size != (self.width, self.height):
                log.info("%s: %dx%d frames are padded to %dx%d (H.264 4:2:0 needs even sizes).",
                         self.path, self.width, self.height, *self.encoded_size)
        stream.width, stream.height = self.encoded_size
        # A fine clock so frames written with their own (variable) timestamps keep them.
        stream.codec_context.time_base = TIME_BASE
        return stream

    def write(self, frames: Union[torch.Tensor, np.ndarray], *, times: Optional[Sequence[float]] = None) -> None:
        """Encode ``frames``: ``[n, H, W, 3]`` float in [0, 1] or uint8, at the writer's size.

        ``times``: [n] seconds, each frame's presentation time (the first written frame's time becomes
        0, so source timestamps can be passed as they are); None means ``frames_written / fps``. Give
        times for every frame of a file or for none.
        """
        import av

        if frames.ndim != 4 or tuple(frames.shape[1:]) != (self.height, self.width, RGB_CHANNELS):
            raise ValueError(
                f"Frames must be [n, {self.height}, {self.width}, 3], got {list(frames.shape)}."
            )
        if times is not None and len(times) != len(frames):
            raise ValueError(f"{len(frames)} frames were given {len(times)} times.")
        pad_x, pad_y = self.encoded_size[0] - self.width, self.encoded_size[1] - self.height
        for row, image in enumerate(to_uint8(frames)):
            if pad_x or pad_y:
                image = np.pad(image, ((0, pad_y), (0, pad_x), (0, 0)), mode="edge")
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = self._next_pts(None if times is None else float(times[row]))
            frame.time_base = TIME_BASE
            with self._naming_the_output():
                self._container.mux(self._stream.encode(frame))
            self.frames_written += 1

    def _next_pts(self, seconds: Optional[float]) -> int:
        """The next frame's pts in ``TIME_BASE`` units, strictly increasing."""
        if seconds is None:
            pts = round(self.frames_written / self.fps / TIME_BASE)
        else:
            if self._first_time is None:
                self._first_time = seconds
            pts = round((seconds - self._first_time) / TIME_BASE)
        if pts <= self._last_pts:
            raise ValueError(f"Frame times must increase; frame {self.frames_written} is not after the one before.")
        self._last_pts = pts
        return pts

    def close(self) -> Path:
        """Flush the encoder, add the audio, and move the finished file into place; returns its path."""
        if self._container is None:
            return self.path
        try:
            if self.frames_written == 0:
                raise UserError(f"No frames were written to {self.path}; nothing to save.")
            with self._naming_the_output():
                self._container.mux(self._stream.encode(None))
                if self._audio is not None:
                    self._audio.mux(self.audio_window_s)
                self._container.close()
                self._container = None
                os.replace(self._partial, self.path)
        except BaseException:
            self._abort()
            raise
        return self.path

    @contextlib.contextmanager
    def _naming_the_output(self):
        """Re-raise an operating-system error while writing (disk full, folder gone) as an ``OSError``
        naming the output the user asked for, not the hidden temporary file."""
        try:
            yield
        except OSError as error:
            raise OSError(error.errno, error.strerror or str(error), str(self.path)) from error

    def _abort(self) -> None:
        """Close and delete the temporary file (after an error or cancellation)."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # the file is being thrown away; its close error is of no interest
                log.debug("closing the partial video %s failed", self._partial, exc_info=True)
            self._container = None
        self._partial.unlink(missing_ok=True)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self._abort()


def write_video(
    path: PathLike,
    frames: Union[torch.Tensor, np.ndarray],
    *,
    fps: Fraction,
    audio_from: Optional[PathLike] = None,
    lossless: bool = False,
) -> Path:
    """Write ``frames`` ``[N, H, W, 3]`` (float in [0, 1] or uint8) as an MP4 in one call."""
    height, width = int(frames.shape[1]), int(frames.shape[2])
    with VideoWriter(path, fps=fps, width=width, height=height, audio_from=audio_from, lossless=lossless) as writer:
        writer.write(frames)
    return Path(path)


def _mp4_can_copy(template) -> bool:
    """True when the MP4 muxer accepts a stream-copy of the audio stream ``template``."""
    import av

    probe_output = av.open(io.BytesIO(), mode="w", format="mp4")
    try:
        probe_output.add_stream_from_template(template)
        probe_output.start_encoding()
        return True
    except (av.error.FFmpegError, ValueError):
        return False
    finally:
        try:
            probe_output.close()
        except av.error.FFmpegError:
            pass


def _packet_in_window(packet, window: Optional[tuple[float, float]]) -> bool:
    """True when the packet's presentation time lies inside ``window`` seconds (or there is none)."""
    if window is None or packet.pts is None:
        return True
    seconds = float(packet.pts * packet.time_base)
    return window[0] <= seconds < window[1]


class _AudioTrack:
    """The first audio track of ``source`` in an MP4 being written: stream-copied, or AAC when MP4 cannot hold it."""

    def __init__(self, output, source: Path) -> None:
        import av

        self.output, self.source, self.stream, self.copy = output, source, None, False
        with av.open(str(source), mode="r") as container:
            if not container.streams.audio:
                return
            audio = container.streams.audio[0]
            self.copy = _mp4_can_copy(audio)
            if self.copy:
                self.stream = output.add_stream_from_template(audio)
            else:
                log.info("Re-encoding the %s audio of %s to AAC for MP4.", audio.codec_context.name, source)
                self.stream = output.add_stream("aac", rate=audio.codec_context.sample_rate)
                self.stream.bit_rate = AAC_BITRATE

    def mux(self, window: Optional[tuple[float, float]]) -> None:
        """Write the source's audio inside ``window`` seconds (all of it when None)."""
        import av

        if self.stream is None:
            return
        with av.open(str(self.source), mode="r") as container:
            audio = container.streams.audio[0]
            if self.copy:
                _copy_audio(self.output, self.stream, container, audio, window)
            else:
                _encode_audio(self.output, self.stream, container, audio, window)


def _copy_audio(output, stream, container, audio, window: Optional[tuple[float, float]]) -> None:
    """Stream-copy the audio packets inside ``window``, shifted to start at the window's start."""
    offset = 0 if window is None else int(round(window[0] / audio.time_base))
    for packet in container.demux(audio):
        if packet.dts is None or not _packet_in_window(packet, window):
            continue
        packet.pts -= offset
        packet.dts -= offset
        packet.stream = stream
        output.mux(packet)


def _decoded_audio(container, audio, window: Optional[tuple[float, float]] = None):
    """Decoded frames of the audio stream ``audio`` whose time lies inside ``window`` seconds (all when
    None), as planar float32 ("fltp") at the source's sample rate and channel layout."""
    import av

    rate = audio.codec_context.sample_rate
    resampler = av.AudioResampler(format="fltp", layout=audio.codec_context.layout.name, rate=rate)
    for frame in container.decode(audio):
        if window is not None and frame.time is not None and not window[0] <= frame.time < window[1]:
            continue
        yield from resampler.resample(frame)


def _encode_audio(output, stream, container, audio, window: Optional[tuple[float, float]]) -> None:
    """Decode the audio inside ``window`` and encode it as AAC at the source sample rate."""
    for converted in _decoded_audio(container, audio, window):
        converted.pts = None
        output.mux(stream.encode(converted))
    output.mux(stream.encode(None))


def read_audio(path: PathLike, window: tuple[float, float]) -> tuple[torch.Tensor, int]:
    """The first audio track of ``path`` cut to ``window`` seconds (start, stop), sample-exact.

    Returns (waveform [channels, samples] float32 in [-1, 1], sample rate); raises ``UserError`` when
    the file has no audio track.
    """
    import av

    start, stop = window
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise UserError(f"{path} has no audio track.")
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        chunks = [frame.to_ndarray() for frame in _decoded_audio(container, stream)]  # each [channels, samples]
    waveform = torch.from_numpy(np.concatenate(chunks, axis=1)) if chunks else torch.zeros(1, 0)
    return waveform[:, int(round(start * rate)): int(round(stop * rate))], rate


def audio_window(
    info: VideoInfo, indices: Sequence[int], times: Optional[np.ndarray] = None
) -> tuple[float, float]:
    """Seconds of the source covered by the selected frame ``indices`` (for trimming the audio).

    From the first selected frame's timestamp to the end of the last selected frame (the next frame's
    timestamp, or one average frame later at the end of the clip). ``times`` [frame_count] float64 are
    the frames' timestamps (``frame_times``), read from ``info.path`` when not given; a clip without a
    file (frames in memory) uses ``index / fps``.
    """
    if times is None:
        times = frame_times(info.path) if info.path else np.arange(info.frame_count) / float(info.fps)
    first, last = indices[0], indices[-1]
    stop = times[last + 1] if last + 1 < len(times) else times[last] + 1 / float(info.fps)
    return float(times[first]), float(stop)
