"""Video in and out with PyAV: probe, chunked frame decoding, and an MP4 (H.264) writer with audio.

Frames leave this module as ``[N, H, W, 3]`` (the video's own layout) float32 in [0, 1] or uint8
in 0..255, in chunks, so a long or HD clip never holds every float frame at once. The writer encodes
at the source fps, copies the source's audio track when MP4 can hold it (re-encoding it to AAC when
not), and writes to a temporary file that is renamed into place only once the video is complete: a
failed or cancelled run never leaves a partial output file.
"""

from __future__ import annotations

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
DEFAULT_CRF = 18  # visually lossless for x264
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


def probe(path: PathLike) -> VideoInfo:
    """Read a video's frame count, fps, size and audio track; raises ``UserError`` for unreadable files."""
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
        audio = container.streams.audio[0] if container.streams.audio else None
        info = VideoInfo(
            path=str(path),
            frame_count=int(frame_count),
            fps=Fraction(fps) if fps else Fraction(0),
            width=int(context.width),
            height=int(context.height),
            codec=context.name,
            has_audio=audio is not None,
            audio_codec=audio.codec_context.name if audio is not None else None,
        )
    finally:
        container.close()
    if info.frame_count == 0 or info.width == 0 or info.height == 0:
        raise UserError(f"{path} contains no video frames; pass a video with at least one frame.")
    if not info.fps:
        raise UserError(f"{path} does not state a frame rate; re-encode it with a fixed fps.")
    return info


def _to_output(frames: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """uint8 [n, H, W, 3] -> the requested dtype (float in [0, 1] or uint8)."""
    tensor = torch.from_numpy(frames)
    if dtype == torch.uint8:
        return tensor
    return tensor.to(dtype) / MAX_UINT8


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
    Decoding runs from the start of the file (frame-exact; seeking is not frame-exact in every container).
    """
    import av

    if chunk_size < 1:
        raise ValueError(f"Chunk size must be 1 or more, got {chunk_size}.")
    info = probe(path)
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
                buffer.append(frame.to_ndarray(format="rgb24"))
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


def _partial_path(path: Path) -> Path:
    """A hidden temporary name beside ``path`` with the same suffix (the muxer is chosen explicitly)."""
    return path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")


class VideoWriter:
    """MP4 (H.264) writer at a fixed fps, with the audio of a source video; use as a context manager.

    Frames go in through ``write(frames)`` as ``[n, H, W, 3]`` float in [0, 1] or uint8. ``lossless``
    stores RGB exactly (libx264rgb, qp 0): decoding the file gives back the written uint8 frames.
    Otherwise x264 at ``crf`` in yuv420p (yuv444p for odd sizes, which 4:2:0 cannot hold).
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
        self.width, self.height = width, height
        self.fps = Fraction(fps).limit_denominator(1_000_000)
        self.audio_from = Path(audio_from) if audio_from is not None else None
        self.audio_window_s = audio_window_s
        self.frames_written = 0
        self._partial = _partial_path(self.path)
        self._container = av.open(str(self._partial), mode="w", format="mp4")
        try:
            self._stream = self._add_video_stream(crf, lossless)
            # Every stream must exist before the first packet is written (the header goes out then).
            self._audio = _AudioTrack(self._container, self.audio_from) if self.audio_from else None
        except BaseException:
            self._abort()
            raise

    def _add_video_stream(self, crf: int, lossless: bool):
        """The H.264 stream: exact RGB when lossless, else yuv420p (yuv444p for odd frame sizes)."""
        if lossless:
            stream = self._container.add_stream("libx264rgb", rate=self.fps)
            stream.pix_fmt = "rgb24"
            stream.options = {"qp": "0", "preset": "medium"}
        else:
            stream = self._container.add_stream("libx264", rate=self.fps)
            even = self.width % 2 == 0 and self.height % 2 == 0
            stream.pix_fmt = "yuv420p" if even else "yuv444p"
            stream.options = {"crf": str(crf), "preset": "medium"}
        stream.width, stream.height = self.width, self.height
        return stream

    def write(self, frames: Union[torch.Tensor, np.ndarray]) -> None:
        """Encode ``frames``: ``[n, H, W, 3]`` float in [0, 1] or uint8, at the writer's size."""
        import av

        if frames.ndim != 4 or tuple(frames.shape[1:]) != (self.height, self.width, RGB_CHANNELS):
            raise ValueError(
                f"Frames must be [n, {self.height}, {self.width}, 3], got {list(frames.shape)}."
            )
        for image in to_uint8(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = self.frames_written
            frame.time_base = 1 / self.fps
            self._container.mux(self._stream.encode(frame))
            self.frames_written += 1

    def close(self) -> Path:
        """Flush the encoder, add the audio, and move the finished file into place; returns its path."""
        if self._container is None:
            return self.path
        try:
            if self.frames_written == 0:
                raise UserError(f"No frames were written to {self.path}; nothing to save.")
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


def audio_window(info: VideoInfo, indices: Sequence[int]) -> tuple[float, float]:
    """Seconds of the source covered by the selected frame ``indices`` (for trimming the audio)."""
    start = indices[0] / info.fps
    stop = (indices[-1] + 1) / info.fps
    return float(start), float(stop)
