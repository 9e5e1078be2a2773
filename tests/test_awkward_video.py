"""Videos as phones and editors make them (issue 9): rotation metadata, variable frame rate, odd sizes.

Every clip is the real single_face.mp4 re-encoded with PyAV the way a camera stores it (display matrix,
irregular timestamps, copied audio), and each test first checks with PyAV that the property is really
in the file, so it cannot pass on a clip that lacks it.
"""

from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from media import decoded_frames, dlib_landmarker, encode_clip, single_face_video
from test_pipeline import ReconstructingModel
from dva_model.face.tracking import TrackConfig
from dva_model.formats.image_io import to_uint8
from dva_model.formats.video import FrameSelection, audio_window, frame_times, probe, read_frames, write_video
from dva_model.pipeline import EditConfig, edit_video


def uint8_frames(count):
    return (decoded_frames("single_face.mp4", count) * 255).round().to(torch.uint8).numpy()


def stored_view(path):
    """What the file holds, as FFmpeg reports it: (stored width, height, display rotation of frame 0)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        first = next(container.decode(stream))
        return stream.codec_context.width, stream.codec_context.height, first.rotation


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_display_matrix_turns_frames_upright(tmp_path, rotation):
    frames = uint8_frames(3)
    clip = encode_clip(tmp_path / "phone.mp4", frames, rotation=rotation, lossless=True)
    stored = (360, 640) if rotation % 180 else (640, 360)
    assert stored_view(clip)[:2] == stored and stored_view(clip)[2] % 360 == rotation % 360  # really sideways (or upside down) plus the matrix
    info = probe(clip)
    assert (info.width, info.height, info.rotation) == (640, 360, rotation % 360)
    again, _ = read_frames(clip)
    assert torch.equal((again * 255).round().to(torch.uint8), torch.from_numpy(frames))


def test_legacy_rotate_tag_turns_frames_upright(tmp_path):
    """Matroska keeps a ``rotate`` tag (clockwise degrees, the old FFmpeg convention) instead of a matrix."""
    frames = uint8_frames(2)
    path = tmp_path / "tagged.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=30)
        stream.width, stream.height, stream.pix_fmt, stream.options = 360, 640, "rgb24", {"qp": "0"}
        stream.metadata["rotate"] = "90"
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.rot90(image, k=1)), format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, 30)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    assert stored_view(path) == (360, 640, 0)
    again, info = read_frames(path)
    assert (info.width, info.height, info.rotation) == (640, 360, 270)
    assert torch.equal((again * 255).round().to(torch.uint8), torch.from_numpy(frames))


def test_portrait_phone_clip_is_edited_upright(tmp_path):
    """A phone clip stored sideways with a -90 degree display matrix (what an upright phone writes)."""
    frames = uint8_frames(6)
    clip = encode_clip(tmp_path / "phone.mp4", frames, rotation=-90, audio_from=single_face_video())
    assert stored_view(clip) == (360, 640, -90)
    result = edit_video(clip, tmp_path / "out.mp4", ReconstructingModel(), dlib_landmarker(),
                        config=EditConfig(steps=2))
    assert (result.frames, result.edited, result.untouched) == (6, 6, ())  # the face is found in every frame
    assert stored_view(result.path) == (640, 360, 0)  # written upright, no matrix left to honour
    output, info = read_frames(result.path)
    assert info.has_audio
    source, _ = read_frames(clip)
    assert (output - source).abs().mean() * 255 < 3.0  # the same upright picture (reconstruction)


VFR_TIMES = np.concatenate([np.arange(12) / 60, 12 / 60 + np.arange(1, 13) / 10])  # 60 fps, then 10 fps


def test_variable_frame_rate_audio_window_follows_the_frames_timestamps(tmp_path):
    clip = encode_clip(tmp_path / "vfr.mp4", uint8_frames(24), times=VFR_TIMES, audio_from=single_face_video())
    assert np.allclose(frame_times(clip), VFR_TIMES, atol=1e-4)  # the irregular timestamps are in the file
    info = probe(clip)
    start, stop = audio_window(info, range(12, 20))
    assert start == pytest.approx(VFR_TIMES[12], abs=1e-4) and stop == pytest.approx(VFR_TIMES[20], abs=1e-4)
    # index / average fps would put this window 0.2-0.4 s early
    assert abs(12 / float(info.fps) - VFR_TIMES[12]) > 0.1


def test_variable_frame_rate_edit_keeps_frame_timing_and_audio_span(tmp_path):
    clip = encode_clip(tmp_path / "vfr.mp4", uint8_frames(24), times=VFR_TIMES, audio_from=single_face_video())
    selection = FrameSelection(start=6, stop=20)
    result = edit_video(clip, tmp_path / "out.mp4", ReconstructingModel(), dlib_landmarker(),
                        config=EditConfig(steps=2), selection=selection)
    assert result.frames == 14
    expected = VFR_TIMES[6:20] - VFR_TIMES[6]
    assert np.allclose(frame_times(result.path) - frame_times(result.path)[0], expected, atol=1e-3)
    with av.open(str(result.path)) as container:
        audio = container.streams.audio[0]
        packets = [p for p in container.demux(audio) if p.pts is not None]
        span = float((packets[-1].pts + packets[-1].duration - packets[0].pts) * audio.time_base)
    assert span == pytest.approx(VFR_TIMES[20] - VFR_TIMES[6], abs=0.06)  # the frames' real 1.3 s, not 14/fps


def test_odd_frame_size_is_written_as_even_yuv420p(tmp_path):
    frames = decoded_frames("single_face.mp4", 3)[:, :359, :639]  # a real picture, 639x359
    path = write_video(tmp_path / "odd.mp4", frames, fps=Fraction(25))
    with av.open(str(path)) as container:
        context = container.streams.video[0].codec_context
        assert (context.pix_fmt, context.width, context.height) == ("yuv420p", 640, 360)  # what browsers play
    again, info = read_frames(path)
    assert (info.width, info.height) == (640, 360)
    assert (again[:, :359, :639] - frames).abs().mean() * 255 < 3.0  # the picture itself, unmoved
    assert (again[:, 359] - again[:, 358]).abs().mean() * 255 < 3.0  # the padding repeats the last row
    assert (again[:, :, 639] - again[:, :, 638]).abs().mean() * 255 < 3.0  # ... and the last column


def test_lossless_keeps_an_odd_size_exactly(tmp_path):
    frames = torch.rand(2, 33, 47, 3)
    again, info = read_frames(write_video(tmp_path / "odd.mp4", frames, fps=Fraction(25), lossless=True))
    assert (info.width, info.height) == (47, 33)
    # Exactly the bytes written: to_uint8 rounds half up (x.5 -> x+1), unlike torch.round (half to even).
    assert torch.equal((again * 255).round().to(torch.uint8), torch.from_numpy(to_uint8(frames)))


def test_max_gap_counts_source_frames_with_a_stride(tmp_path, caplog):
    """The face leaves for 8 source frames (12-19); with stride 4 that is only 2 selected frames, which a
    gap counted in selected frames (max_gap 8) would fill by holding the face over frames where it is gone."""
    frames = uint8_frames(40).copy()
    frames[12:20] = 128
    clip = encode_clip(tmp_path / "leaves.mp4", frames, lossless=True)
    selection = FrameSelection(stride=4)
    with caplog.at_level("WARNING"):
        result = edit_video(clip, tmp_path / "out.mp4", ReconstructingModel(paint=-1.0), dlib_landmarker(),
                            config=EditConfig(steps=2, lossless=True), selection=selection,
                            track=TrackConfig(max_gap=8))
    assert result.untouched == ((12, 16),)  # source frame numbers: selected frames 12 and 16 are left alone
    assert result.edited == 8
    gap_messages = [r.getMessage() for r in caplog.records if "No face" in r.getMessage()]
    assert len(gap_messages) == 1 and "frames 12-16 " in gap_messages[0]  # one numbering: the source's
    output, _ = read_frames(result.path)
    assert torch.equal((output[3:5] * 255).round(), torch.full_like(output[3:5], 128.0))  # untouched grey


def test_short_gap_in_source_frames_is_still_filled_with_a_stride(tmp_path):
    frames = uint8_frames(24).copy()
    frames[9:12] = 128  # 3 source frames gone: selected frame 9 only
    clip = encode_clip(tmp_path / "blink.mp4", frames, lossless=True)
    result = edit_video(clip, tmp_path / "out.mp4", ReconstructingModel(), dlib_landmarker(),
                        config=EditConfig(steps=2, lossless=True), selection=FrameSelection(stride=3),
                        track=TrackConfig(max_gap=8))
    assert (result.frames, result.edited, result.untouched) == (8, 8, ())  # gap of 5 source frames <= 8
