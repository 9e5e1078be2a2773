"""VideoLoad: a clip (an uploaded file or a core VIDEO) as IMAGE frames, fps and AUDIO.

The outputs are ComfyUI's own types, so the frames can go to any IMAGE node and, after editing, DVA Paste
Back hands core Save Video a VIDEO with the source's audio and frame rate (or core Create Video /
VideoHelperSuite's Video Combine take the frames, fps and audio).
"""

from pathlib import Path

from comfy_api.v0_0_2 import io

from ._host import file_fingerprint, input_files, input_path, require_all
from .types import CATEGORY_VIDEO

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg")
GIB = 1 << 30
NODE = "DVA Video Load"
REQUIRES = (("av", "av"),)


class DVAVideoLoad(io.ComfyNode):
    """Decodes a video (a frame range, stride and cap) into IMAGE frames, its fps and its audio."""

    REQUIRES = REQUIRES

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DVAVideoLoad", display_name=NODE, category=CATEGORY_VIDEO,
            description=(
                "Loads a video from ComfyUI's input folder (upload one with the button), or the VIDEO connected "
                "to source_video (core Load Video, API nodes), as IMAGE frames in 0..1, its frame rate and its "
                "audio track (trimmed to the selected frames)."),
            inputs=[
                io.Combo.Input("video", options=input_files(*VIDEO_SUFFIXES), upload=io.UploadType.video,
                               tooltip="A video in ComfyUI's input folder (ignored when source_video is connected)."),
                io.Int.Input("start_frame", default=0, min=0, max=10_000_000, step=1,
                             tooltip="First frame to load (0 = the first frame of the video)."),
                io.Int.Input("frame_cap", default=0, min=0, max=10_000_000, step=1,
                             tooltip="Load at most this many frames (0 = up to the end of the video)."),
                io.Int.Input("stride", default=1, min=1, max=1000, step=1,
                             tooltip="Load every n-th frame (1 = every frame); the fps output is divided by it."),
                io.Float.Input("max_gib", default=16.0, min=0.1, max=1024.0, step=0.1, tooltip=
                               "Refuse before decoding when the float frames would need more memory than this "
                               "(GiB); choose a frame cap or a stride for long or high-resolution clips."),
                io.Video.Input("source_video", optional=True, tooltip=
                               "A core VIDEO (Load Video, API nodes...) to read instead of the uploaded file; the "
                               "frame range, stride and memory check apply to it too."),
            ],
            outputs=[
                io.Image.Output(display_name="frames", tooltip="Selected frames, [N, H, W, 3] float in 0..1."),
                io.Float.Output(display_name="fps", tooltip="Frame rate of the output (the source fps divided by the stride)."),
                io.Audio.Output(display_name="audio",
                                tooltip="The audio of the selected frames (None when the video has no audio track)."),
                io.Int.Output(display_name="frame_count", tooltip="Number of frames loaded."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, video, source_video=None, **_):
        # An uploaded file re-runs the node when it changes; a connected VIDEO re-runs it through its
        # upstream nodes (and is not evaluated yet when ComfyUI asks, so the file may well be absent).
        try:
            return file_fingerprint(video)
        except FileNotFoundError:
            return None

    @classmethod
    def validate_inputs(cls, video, input_types=None, **_):
        if input_types and "source_video" in input_types:
            return True  # the file is not used
        try:
            input_path(video)
        except FileNotFoundError as error:
            return str(error)
        return True

    @classmethod
    def execute(cls, video, start_frame, frame_cap, stride, max_gib, source_video=None) -> io.NodeOutput:
        require_all(NODE, REQUIRES)
        from dva_model.formats.video import FrameSelection, audio_window, read_frames

        path = input_path(video) if source_video is None else video_file(source_video)
        selection = FrameSelection(start=start_frame, stride=stride, max_frames=frame_cap or None)
        frames, info = read_frames(path, selection=selection, max_bytes=int(max_gib * GIB))
        indices = selection.indices(info.frame_count)[: len(frames)]
        audio = read_audio(path, audio_window(info, indices)) if info.has_audio else None
        return io.NodeOutput(frames, float(info.fps) / stride, audio, len(frames))


def video_file(video) -> Path:
    """A file holding core VIDEO ``video``: its own file, else an encoded copy in ComfyUI's temp folder.

    A VIDEO made from tensors (core Create Video) is encoded once, to a name derived from its content, so
    that the frame selection, the memory check and the audio trimming work as on an uploaded file.
    """
    import hashlib
    import os

    import folder_paths

    source = video.get_stream_source()
    if isinstance(source, (str, os.PathLike)):
        return Path(source)
    data = source.getvalue()  # an in-memory container (BytesIO)
    target = Path(folder_paths.get_temp_directory()) / "dva" / f"video_{hashlib.sha256(data).hexdigest()[:16]}.mp4"
    if not target.is_file():
        from dva_model.formats.files import write_atomically

        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(target, lambda tmp: Path(tmp).write_bytes(data))
    return target


def read_audio(path, window):
    """ComfyUI AUDIO of a file's first audio track inside ``window`` seconds (start, stop).

    Returns {"waveform": [1, channels, samples] float32 in [-1, 1], "sample_rate": int}.
    """
    import av
    import numpy as np
    import torch

    start, stop = window
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        resampler = av.AudioResampler(format="fltp", layout=stream.codec_context.layout.name, rate=rate)
        chunks = [frame.to_ndarray() for decoded in container.decode(stream)
                  for frame in resampler.resample(decoded)]  # each [channels, samples]
    waveform = torch.from_numpy(np.concatenate(chunks, axis=1)) if chunks else torch.zeros(1, 0)
    waveform = waveform[:, int(round(start * rate)): int(round(stop * rate))]
    return {"waveform": waveform.unsqueeze(0).contiguous(), "sample_rate": rate}
