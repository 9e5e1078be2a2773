"""The streaming edit pipeline: the latent file written row by row, worker threads, bounded memory,
cancel, and the streamed result equal to the whole-clip recipe on a real clip with the tiny model."""

import threading
from fractions import Fraction

import numpy as np
import pytest
import torch

from media import decoded_frames, dlib_landmarker, single_face_video
from dva_model import stages, tracks
from dva_model.errors import UserError
from dva_model.face.paste import PasteConfig, paste_back, smooth_in_time
from dva_model.formats.latent_io import LatentFile, load_latent
from dva_model.formats.video import FrameSelection, VideoWriter, read_frames, to_uint8
from dva_model.model import mean_identity
from dva_model.pipeline import EditConfig, align_video, edit_tracked, edit_video, paste_masks, track_video
from dva_model.progress import Cancelled
from dva_model.workers import Background, Sink
from test_pipeline import ReconstructingModel


def _dva_threads():
    return [t for t in threading.enumerate() if t.name.startswith("dva-")]


# ------------------------------------------------------------------------------------------- latent file

def test_latent_file_rows_round_trip_and_any_safetensors_reader_opens_it(tmp_path):
    from safetensors.torch import load_file

    values = torch.randn(5, 3, 16, 16)
    with LatentFile.create(tmp_path / "l.safetensors", frames=5, image_size=16, steps=3,
                           frame_names=list("abcde")) as file:
        file.write("x_T", 3, values[3:])
        file.write("x_T", 0, values[:3])
        file.write("crops", 1, values[1:2])
        file.write("identity", 0, torch.ones(512))
        assert [p.name for p in tmp_path.iterdir()] != ["l.safetensors"]  # not in place before commit
        file.commit()
    with LatentFile.open(tmp_path / "l.safetensors") as file:
        assert torch.equal(file.read("x_T", slice(1, 4)), values[1:4])
        assert torch.equal(file.read("crops", slice(0, 2))[1], values[1]) and not file.read("crops", slice(0, 1)).any()
        assert [rows for rows, _ in file.chunks("x_T", 2)] == [slice(0, 2), slice(2, 4), slice(4, 5)]
    plain = load_file(str(tmp_path / "l.safetensors"))
    assert torch.equal(plain["x_T"], values) and plain["crops"].shape == (5, 3, 16, 16)
    latent = load_latent(tmp_path / "l.safetensors")
    assert latent.steps == 3 and latent.frame_names == tuple("abcde") and torch.equal(latent.x_T, values)


def test_an_unfinished_latent_file_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with LatentFile.create(tmp_path / "l.safetensors", frames=2, image_size=8, steps=2) as file:
            file.write("z_id", 0, torch.zeros(2, 512))
            raise RuntimeError("cancelled")
    assert list(tmp_path.iterdir()) == []


def test_a_latent_file_with_lying_sizes_is_refused_before_reading(tmp_path):
    import json
    import struct

    with LatentFile.create(tmp_path / "l.safetensors", frames=2, image_size=8, steps=2) as file:
        file.commit()
    data = (tmp_path / "l.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8: 8 + length])
    header["x_T"]["shape"] = [10**9, 3, 8, 8]  # a billion frames in a file of a few kB
    text = json.dumps(header).encode()
    (tmp_path / "bad.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + data[8 + length:])
    with pytest.raises(UserError, match="bad.safetensors is an incomplete DVA latent file"):
        LatentFile.open(tmp_path / "bad.safetensors")
    (tmp_path / "short.safetensors").write_bytes(data[:-100])
    with pytest.raises(UserError, match="incomplete DVA latent file"):
        LatentFile.open(tmp_path / "short.safetensors")


# ------------------------------------------------------------------------------------------- workers

def test_a_worker_error_reaches_the_consumer_and_no_thread_survives():
    def numbers():
        yield 1
        raise ValueError("broken frame")

    with pytest.raises(ValueError, match="broken frame"):
        list(Background(numbers(), name="dva-test"))
    seen = []
    with pytest.raises(ValueError, match="bad item"):
        with Sink(lambda x: seen.append(x) if x < 3 else (_ for _ in ()).throw(ValueError("bad item")),
                  name="dva-test") as sink:
            for item in range(10):
                sink.put(item)
    assert seen == [0, 1, 2] and not _dva_threads()


def test_a_consumer_that_stops_early_stops_an_endless_producer():
    def endless():
        n = 0
        while True:
            n += 1
            yield n

    with Background(endless(), maxsize=2, name="dva-test") as items:
        assert next(iter(items)) == 1
    assert not _dva_threads()


# ------------------------------------------------------------------------------------------- masks

def test_streamed_temporal_smoothing_equals_the_whole_clip():
    generator = torch.Generator().manual_seed(0)
    masks = (torch.rand(11, 1, 8, 8, generator=generator) > 0.5).float()
    numbers = [0, 1, 2, 3, 4, 5, 9, 10, 11, 12, 20]  # three runs
    whole = smooth_in_time(masks, 1.2, numbers)
    smoother = stages.TemporalMaskSmoother(1.2, numbers)
    out, held = [], 0
    for start in range(0, 11, 2):  # chunks of two rows, one chunk with none
        rows = slice(start, min(start + 2, 11))
        chunk = stages._Chunk(range(start, start + 2), rows, None, None, masks[rows])
        out += smoother.push(chunk)
        held = max(held, len(smoother.window))
    out += smoother.flush()
    streamed = torch.cat([c.masks for c in out])
    assert torch.allclose(streamed, whole.clamp(0, 1), atol=1e-6)
    assert held <= 2 * stages.temporal_radius(1.2) + 2  # a window, not the clip


# ------------------------------------------------------------------------------------------- the pipeline

class CountingModel(ReconstructingModel):
    """ReconstructingModel that counts the crops it has taken in (encode) and given out (decode)."""

    def __init__(self, log):
        super().__init__()
        self.log = log

    def encode_features(self, crops, **kwargs):
        self.log.event("model", len(crops))
        return super().encode_features(crops, **kwargs)


class InFlight:
    """Frames decoded but not yet consumed (by the model in pass 2, by the writer in pass 3)."""

    def __init__(self):
        self.lock, self.counts, self.worst = threading.Lock(), {"decoded": 0, "model": 0, "written": 0}, 0
        self.pass_name = "encode"

    def event(self, name, count):
        with self.lock:
            self.counts[name] += count
            consumed = self.counts["model"] if self.pass_name == "encode" else self.counts["written"]
            self.worst = max(self.worst, self.counts["decoded"] - consumed)

    def start(self, pass_name):
        self.pass_name, self.counts = pass_name, {"decoded": 0, "model": 0, "written": 0}


def test_the_pipeline_holds_a_bounded_number_of_frames_whatever_the_clip_length(tmp_path, monkeypatch):
    log = InFlight()
    real_iter_frames, real_write = tracks.iter_frames, VideoWriter.write

    def counted_frames(*args, **kwargs):
        for item in real_iter_frames(*args, **kwargs):
            log.event("decoded", len(item[0]))
            yield item

    def counted_write(self, frames, **kwargs):
        real_write(self, frames, **kwargs)
        log.event("written", len(frames))

    selection, chunk = FrameSelection(max_frames=40), 2
    faces = track_video(single_face_video(), dlib_landmarker(), selection=selection)
    monkeypatch.setattr(tracks, "iter_frames", counted_frames)
    monkeypatch.setattr(VideoWriter, "write", counted_write)
    model = CountingModel(log)
    config = EditConfig(steps=2, batch_size=chunk, chunk_frames=chunk, paste=PasteConfig(temporal_sigma=1.0))
    stages_seen = []

    def progress(stage):
        if stage in ("encode", "decode") and stage not in stages_seen:
            stages_seen.append(stage)
            log.start(stage)
        return None

    result = edit_tracked(faces, single_face_video(), tmp_path / "out.mp4", model, config=config, selection=selection,
                          stage_progress=progress)
    assert result.frames == 40 and stages_seen == ["encode", "decode"]
    # At most 7 chunks of 2 frames: 2 queued + 1 waiting after decoding, 1 being pasted, 2 queued + 1
    # being encoded (pass 2: 3 + 1 being warped + 2 queued) -- far fewer than the clip's 40 frames.
    assert 0 < log.worst <= 14, log.worst


def test_cancel_during_decoding_stops_every_worker_and_leaves_no_file(tmp_path):
    def progress(stage):
        def callback(done, total):
            if stage == "paste" and done > 0 or stage == "decode" and done >= 3:
                raise Cancelled("stop")
        return callback

    with pytest.raises(Cancelled):
        edit_video(single_face_video(), tmp_path / "out.mp4", ReconstructingModel(), dlib_landmarker(),
                   config=EditConfig(steps=2, batch_size=2, chunk_frames=2), selection=FrameSelection(max_frames=12),
                   stage_progress=progress)
    assert list(tmp_path.iterdir()) == [] and not _dva_threads()


def test_streamed_edit_equals_the_whole_clip_recipe_across_chunk_boundaries(tmp_path, tiny_model):
    """Real tiny model, 9 frames in chunks of 2 (batches of 2), temporal mask smoothing across chunks:
    the written frames equal tracking, encoding, inverting, decoding and pasting the whole clip at once."""
    selection = FrameSelection(max_frames=9)
    paste = PasteConfig(temporal_sigma=1.0, dilate=1)
    latent_path = tmp_path / "clip.safetensors"
    result = edit_video(single_face_video(), tmp_path / "out.mp4", tiny_model, dlib_landmarker(),
                        config=EditConfig(steps=2, batch_size=2, chunk_frames=2, lossless=True, paste=paste),
                        selection=selection, latent_path=latent_path)
    streamed, _ = read_frames(result.path)

    clip = align_video(single_face_video(), dlib_landmarker(), selection=selection)
    z_id, z_lnd = tiny_model.encode_features(clip.crops)
    identity = mean_identity(z_id)
    x_T = tiny_model.invert(clip.crops, identity, z_lnd, steps=2)
    edited = tiny_model.decode(x_T, identity, z_lnd, steps=2)
    masks = paste_masks(tiny_model, clip.crops, edited, list(range(9)), config=EditConfig(paste=paste))
    whole, _ = paste_back(decoded_frames("single_face.mp4", 9), edited, masks, clip.quads)
    difference = (streamed * 255 - torch.from_numpy(to_uint8(whole)).float()).abs()
    assert difference.max() <= 1 and difference.mean() < 1e-3  # equal up to a rounding step

    kept = load_latent(latent_path)  # the kept encoding is the whole-clip one
    assert torch.allclose(kept.identity, identity, atol=1e-6) and torch.allclose(kept.z_lnd, z_lnd, atol=1e-6)
    assert torch.allclose(kept.x_T, x_T, atol=1e-4)
    with LatentFile.open(latent_path) as file:
        assert torch.allclose(file.read("crops"), clip.crops, atol=1e-4)  # chunks blur with their own kernel size
        assert file.frame_names == tuple(f"{i:06d}" for i in range(9))


def test_clip_edit_command_renders_a_video_through_the_same_pipeline(tmp_path, tiny_safetensors, monkeypatch):
    """`clip-edit --video ... --edited-video --decode-out`: the delta, the edited video and its crops."""
    from safetensors.torch import save_file

    from dva_model.cli import main as cli
    from dva_model.formats.image_io import read_crops
    from dva_model.formats.video import probe
    from test_clip_edit import tiny_clip

    monkeypatch.setattr(cli, "COMMANDS", tuple(dict.fromkeys(cli.COMMANDS + ("clip_edit",))))
    weights = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_clip(seed=2).state_dict().items()}, str(weights))
    video, crops = tmp_path / "edited.mp4", tmp_path / "crops"
    status = cli.main(["--quiet", "clip-edit", "--checkpoint", str(tiny_safetensors), "--video", str(single_face_video()),
                       "--max-frames", "3", "--source", "face", "--target", "face with beard", "--out",
                       str(tmp_path / "beard.safetensors"), "--clip-weights", str(weights), "--iterations", "1",
                       "--reference-frame", "2", "--steps", "2", "--edited-video", str(video), "--decode-out",
                       str(crops), "--device", "cpu"])
    assert status == 0
    info = probe(video)
    assert (info.frame_count, info.width, info.height, info.has_audio) == (3, 640, 360, True)
    names, _ = read_crops(crops, size=256)
    assert names == ["000000", "000001", "000002"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["beard.safetensors", "clip.safetensors", "crops", "edited.mp4"]
