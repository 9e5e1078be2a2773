"""Video in and out (dva_model.formats.video) on real clips: probe, selection, chunking, writer, audio, errors."""

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from media import carphone_video, decoded_frames, single_face_video
from dva_model.errors import UserError
from dva_model.formats.video import FrameSelection, VideoWriter, iter_frames, probe, read_frames, write_video


def audio_seconds(path: Path) -> float:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return float(sum(frame.samples for frame in container.decode(stream)) / stream.codec_context.sample_rate)


def test_probe_reads_frame_count_fps_size_and_audio():
    info = probe(single_face_video())
    assert (info.frame_count, info.fps, info.width, info.height) == (72, Fraction(30), 640, 360)
    assert info.has_audio and info.duration_s == pytest.approx(2.4)
    assert info.float_bytes() == 72 * 360 * 640 * 3 * 4
    small = probe(carphone_video())
    assert (small.frame_count, small.fps, small.width, small.height) == (120, Fraction(30000, 1001), 176, 144)
    assert not small.has_audio


def test_selection_range_stride_and_cap_pick_the_right_frames_in_bounded_chunks():
    everything = decoded_frames("single_face.mp4", 24)
    selection = FrameSelection(start=3, stop=24, stride=4, max_frames=4)
    chunks = list(iter_frames(single_face_video(), selection=selection, chunk_size=3))
    assert [list(indices) for indices, _ in chunks] == [[3, 7, 11], [15]]
    frames = torch.cat([frames for _, frames in chunks])
    assert frames.dtype == torch.float32 and frames.shape == (4, 360, 640, 3)
    assert 0.0 <= frames.min() and frames.max() <= 1.0
    assert torch.equal(frames, everything[[3, 7, 11, 15]])


def test_uint8_frames_equal_float_frames_times_255():
    (_, as_uint8), = iter_frames(single_face_video(), selection=FrameSelection(max_frames=2), dtype=torch.uint8)
    assert as_uint8.dtype == torch.uint8
    assert torch.equal(as_uint8.float() / 255.0, decoded_frames("single_face.mp4", 2))


def test_memory_estimate_refuses_before_decoding():
    with pytest.raises(UserError, match="GiB"):
        read_frames(single_face_video(), max_bytes=10 * 2**20)
    frames, _ = read_frames(single_face_video(), selection=FrameSelection(max_frames=2), max_bytes=10 * 2**20)
    assert len(frames) == 2


@pytest.mark.parametrize("bad", [dict(start=-1), dict(start=5, stop=5), dict(stride=0), dict(max_frames=0)])
def test_invalid_selection_is_refused(bad):
    with pytest.raises(ValueError):
        FrameSelection(**bad)


def test_lossless_output_keeps_frames_fps_size_and_audio_exactly(tmp_path):
    frames = decoded_frames("single_face.mp4", 72)
    out = write_video(tmp_path / "out.mp4", frames, fps=Fraction(30), audio_from=single_face_video(), lossless=True)
    info = probe(out)
    assert (info.frame_count, info.fps, info.width, info.height, info.has_audio) == (72, Fraction(30), 640, 360, True)
    again, _ = read_frames(out)
    assert torch.equal(again, frames)
    assert audio_seconds(out) == pytest.approx(audio_seconds(single_face_video()), abs=0.05)
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]  # no temporary file left


def test_default_h264_output_is_close_to_the_input(tmp_path):
    frames = decoded_frames("single_face.mp4", 8)
    out = write_video(tmp_path / "out.mp4", frames, fps=Fraction(30))
    again, info = read_frames(out)
    assert info.codec == "h264" and not info.has_audio
    assert (again - frames).abs().mean() * 255 < 3.0


def test_audio_window_trims_to_the_selected_frames(tmp_path):
    frames = decoded_frames("single_face.mp4", 24)
    with VideoWriter(tmp_path / "cut.mp4", fps=Fraction(30), width=640, height=360,
                     audio_from=single_face_video(), audio_window_s=(0.2, 0.8)) as writer:
        writer.write(frames[6:24])
    assert audio_seconds(tmp_path / "cut.mp4") == pytest.approx(0.6, abs=0.06)


def make_pcm_u8_video(path: Path) -> Path:
    """A Matroska clip whose audio (pcm_u8) MP4 cannot hold, so the writer must re-encode it."""
    rate = 16000
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("pcm_u8", rate=rate)
        audio.layout = "mono"
        for i in range(25):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 8, np.uint8), format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        tone = (np.sin(2 * np.pi * 440 * np.arange(rate) / rate) * 8000).astype(np.int16)
        for start in range(0, rate, 1600):
            frame = av.AudioFrame.from_ndarray(tone[None, start:start + 1600], format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            container.mux(audio.encode(frame))
        container.mux(audio.encode(None))
    return path


def test_audio_that_mp4_cannot_hold_is_reencoded_to_aac(tmp_path):
    source = make_pcm_u8_video(tmp_path / "pcm.mkv")
    frames, info = read_frames(source)
    out = write_video(tmp_path / "out.mp4", frames, fps=info.fps, audio_from=source)
    assert probe(out).audio_codec == "aac"
    assert audio_seconds(out) == pytest.approx(1.0, abs=0.1)


def corrupt_files(folder: Path) -> dict:
    data = single_face_video().read_bytes()
    files = {
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "text": b"not a video\n" * 100,
        "noise": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    }
    paths = {}
    for name, content in files.items():
        paths[name] = folder / f"{name}.mp4"
        paths[name].write_bytes(content)
    return paths


def test_corrupt_empty_and_non_video_files_give_one_sentence_naming_the_file(tmp_path):
    for name, path in corrupt_files(tmp_path).items():
        with pytest.raises(UserError) as error:
            read_frames(path)
        message = str(error.value)
        assert str(path) in message and "\n" not in message and message.endswith("."), (name, message)
    with pytest.raises(UserError, match="does not exist"):
        probe(tmp_path / "missing.mp4")


def test_failed_write_leaves_no_file(tmp_path):
    target = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError):
        with VideoWriter(target, fps=Fraction(30), width=64, height=48, audio_from=single_face_video()) as writer:
            writer.write(torch.rand(2, 48, 64, 3))
            raise RuntimeError("cancelled by the user")
    with pytest.raises(ValueError, match="Frames must be"):
        with VideoWriter(target, fps=Fraction(30), width=64, height=48) as writer:
            writer.write(torch.rand(2, 40, 64, 3))
    with pytest.raises(UserError, match="No frames"):
        VideoWriter(target, fps=Fraction(30), width=64, height=48).close()
    assert list(tmp_path.iterdir()) == []
