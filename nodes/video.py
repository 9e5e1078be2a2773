"""VideoLoad: a clip from ComfyUI's input folder as IMAGE frames, fps and AUDIO.

The outputs are ComfyUI's own types, so the edited frames can go to core Create Video + Save Video,
to VideoHelperSuite's Video Combine, or to any IMAGE node.
"""

from ._host import input_file_problem, input_files, input_fingerprint, input_path, require_all

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg")
GIB = 1 << 30
NODE = "DVA Video Load"
REQUIRES = (("av", "av"),)


class DVAVideoLoad:
    """Decodes a video (a frame range, stride and cap) into IMAGE frames, its fps and its audio."""

    CATEGORY = "DVA"
    DESCRIPTION = (
        "Loads a video from ComfyUI's input folder (upload one with the button) as IMAGE frames in 0..1, "
        "its frame rate and its audio track (trimmed to the selected frames)."
    )
    RETURN_TYPES = ("IMAGE", "FLOAT", "AUDIO", "INT")
    RETURN_NAMES = ("frames", "fps", "audio", "frame_count")
    OUTPUT_TOOLTIPS = (
        "Selected frames, [N, H, W, 3] float in 0..1.",
        "Frame rate of the output (the source fps divided by the stride).",
        "The audio of the selected frames (None when the video has no audio track).",
        "Number of frames loaded.",
    )
    FUNCTION = "execute"
    REQUIRES = REQUIRES

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video": (input_files(*VIDEO_SUFFIXES), {"video_upload": True,
                      "tooltip": "A video in ComfyUI's input folder."}),
            "start_frame": ("INT", {"default": 0, "min": 0, "max": 10_000_000, "step": 1,
                            "tooltip": "First frame to load (0 = the first frame of the video)."}),
            "frame_cap": ("INT", {"default": 0, "min": 0, "max": 10_000_000, "step": 1,
                          "tooltip": "Load at most this many frames (0 = up to the end of the video)."}),
            "stride": ("INT", {"default": 1, "min": 1, "max": 1000, "step": 1,
                       "tooltip": "Load every n-th frame (1 = every frame); the fps output is divided by it."}),
            "max_gib": ("FLOAT", {"default": 16.0, "min": 0.1, "max": 1024.0, "step": 0.1, "tooltip":
                        "Refuse before decoding when the float frames would need more memory than this "
                        "(GiB); choose a frame cap or a stride for long or high-resolution clips."}),
        }}

    @classmethod
    def IS_CHANGED(cls, video, **_):
        return input_fingerprint(video)

    @classmethod
    def VALIDATE_INPUTS(cls, video, **_):
        return input_file_problem(video)

    @classmethod
    def execute(cls, video, start_frame, frame_cap, stride, max_gib):
        require_all(NODE, REQUIRES)
        from dva_model.formats.video import FrameSelection, audio_window, read_frames

        path = input_path(video)
        selection = FrameSelection(start=start_frame, stride=stride, max_frames=frame_cap or None)
        frames, info = read_frames(path, selection=selection, max_bytes=int(max_gib * GIB))
        indices = selection.indices(info.frame_count)[: len(frames)]
        audio = read_audio(path, audio_window(info, indices)) if info.has_audio else None
        return (frames, float(info.fps) / stride, audio, len(frames))


def read_audio(path, window):
    """ComfyUI AUDIO of a file's first audio track inside ``window`` seconds (start, stop).

    Returns {"waveform": [1, channels, samples] float32 in [-1, 1], "sample_rate": int}.
    """
    from dva_model.formats.video import read_audio as read_waveform

    waveform, rate = read_waveform(path, window)
    return {"waveform": waveform.unsqueeze(0).contiguous(), "sample_rate": rate}
