"""Frames split across processes and gathered back in order, with two real gloo processes on the CPU."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from dva_model.distributed import Workers, close


@pytest.mark.parametrize("count,world,align", [(10, 2, 4), (3, 2, 4), (17, 3, 2), (0, 2, 8), (8, 2, 8), (9, 4, 1)])
def test_shards_cover_every_row_once_in_order_at_batch_boundaries(count, world, align):
    shards = [Workers(rank=r, world=world).shard(count, align=align) for r in range(world)]
    rows = [row for s in shards for row in range(count)[s]]
    assert rows == list(range(count))
    assert all(s.start % align == 0 or s.start == count for s in shards)
    batches = [-(-(s.stop - s.start) // align) for s in shards]
    assert max(batches) - min(batches) <= 1  # batches dealt out as evenly as they go


def test_one_process_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    workers, device = Workers.from_environment("cpu")
    part = torch.arange(5)
    assert workers == Workers() and device == "cpu" and workers.shard(5) == slice(0, 5)
    assert workers.gather(part, count=5) is part


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, port: int, count: int, align: int, out: dict) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    workers, device = Workers.from_environment("cpu")
    rows = torch.arange(count, dtype=torch.float32)[:, None, None].expand(count, 2, 3) * 10  # row r holds 10 r
    mine = workers.shard(count, align=align)
    gathered = workers.gather(rows[mine].clone(), count=count, align=align)
    out[rank] = (device, workers.rank, gathered)
    close(workers)


def test_two_gloo_processes_gather_every_row_in_order():
    count, align, world = 11, 4, 2  # shards of 8 and 3 rows: unequal, padded inside gather
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(world, _free_port(), count, align, out), nprocs=world, join=True)
    expected = torch.arange(count, dtype=torch.float32)[:, None, None].expand(count, 2, 3) * 10
    for rank in range(world):
        device, got_rank, gathered = out[rank]
        assert device == "cpu" and got_rank == rank
        assert torch.equal(gathered, expected)


def test_torchrun_edit_writes_what_one_process_writes(tmp_path, tiny_checkpoint):
    """`torchrun --nproc-per-node 2 -m dva_model edit`: two gloo processes split the chunks of frames after
    the clip identity (20 frames in chunks of 16: the second process inverts and decodes frames 16-19)
    and the first writes the video; every frame is identical to the one-process edit's. Both runs use
    one thread a process (torchrun's default), so the kernels are the same."""
    from dva_model.formats.video import iter_frames
    from media import single_face_video

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    edit = ["edit", "--checkpoint", str(tiny_checkpoint), "--video", str(single_face_video()), "--max-frames", "20",
            "--steps", "2", "--batch-size", "2", "--device", "cpu", "--lossless"]
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
    assert [p.name for p in (tmp_path / "two").iterdir()] == ["e.mp4"]  # one writer, no leftovers
    frames = 0
    for (_, a), (_, b) in zip(iter_frames(tmp_path / "one" / "e.mp4", dtype=torch.uint8),
                              iter_frames(tmp_path / "two" / "e.mp4", dtype=torch.uint8), strict=True):
        assert torch.equal(a, b)
        frames += len(a)
    assert frames == 20
