"""Work split across processes and collected in order, with two real gloo processes on the CPU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dva_model.distributed import Workers


def test_one_process_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    workers, device = Workers.from_environment("cpu")
    assert workers == Workers() and device == "cpu"
    assert not workers.distributed and workers.is_root and workers.owner(3) == 0


@pytest.mark.parametrize("clip, faces", [("single_face.mp4", []), ("multi_face_pan.mp4", ["--faces", "1,0"])],
                         ids=["one face", "two people"])
def test_torchrun_edit_writes_what_one_process_writes(tmp_path, tiny_checkpoint, clip, faces):
    """`torchrun --nproc-per-node 2 -m dva_model edit`: two gloo processes split the chunks of frames after
    the clip identity (20 frames in chunks of 16: the second process inverts and decodes frames 16-19,
    of each person) and the first writes the video; every frame is identical to the one-process edit's.
    Both runs use one thread a process (torchrun's default), so the kernels are the same."""
    from dva_model.formats.video import iter_frames
    from media import media_path

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    edit = ["edit", "--checkpoint", str(tiny_checkpoint), "--video", str(media_path(clip)), "--max-frames", "20",
            "--steps", "2", "--batch-size", "2", "--device", "cpu", "--lossless", *faces]
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = subprocess.run([sys.executable, "-m", "dva_model", "--quiet", *edit, "--out", str(tmp_path / "one" / "e.mp4")],
                         cwd=repo, env=env, capture_output=True, text=True, timeout=1800)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "dva_model", *edit, "--out", str(tmp_path / "two" / "e.mp4")],
                         cwd=repo, env=env, capture_output=True, text=True, timeout=1800)
    assert two.returncode == 0, two.stderr[-3000:]
    for line in ("process 0 of 2: inverting crop chunks [0] of 2", "process 1 of 2: inverting crop chunks [1] of 2",
                 "process 1 of 2: decoding frame chunks [1]"):
        assert line in two.stderr, two.stderr[-3000:]
    people = 2 if faces else 1
    assert two.stderr.count("process 1 of 2: inverting crop chunks [1] of 2") == people, "each person's is shared"
    assert [p.name for p in (tmp_path / "two").iterdir()] == ["e.mp4"]  # one writer, no leftovers
    frames = 0
    for (_, a), (_, b) in zip(iter_frames(tmp_path / "one" / "e.mp4", dtype=torch.uint8),
                              iter_frames(tmp_path / "two" / "e.mp4", dtype=torch.uint8), strict=True):
        assert torch.equal(a, b)
        frames += len(a)
    assert frames == 20
