"""Peak memory of ``python -m dva_model edit`` on a high-resolution clip (issue 9: 4K in chunks).

Builds a 4K clip from the real talking-head clip (upscaled, H.264), a tiny random-weight checkpoint in
the released format, runs the edit command under ``/usr/bin/time -v`` and prints its peak resident
memory. The model is tiny on purpose: what is measured is the full-resolution frame handling (decode,
paste back, encode), which does not depend on the model's size.

    python tools/video_memory.py --frames 10 --size 3840x2160 --work /tmp/bench-4k [--repo PATH]

``--repo`` runs another checkout's code (e.g. an older commit's worktree) for a before/after table.
"""

import argparse
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))


def make_clip(path: Path, frames: int, width: int, height: int) -> Path:
    """The first ``frames`` frames of tests/media's single_face.mp4 resized to ``width`` x ``height``."""
    import torch

    sys.path.insert(0, str(HERE / "tests"))
    from media import decoded_frames
    from dva_model.formats.video import write_video

    small = decoded_frames("single_face.mp4", frames).permute(0, 3, 1, 2)  # [N, 3, 360, 640]
    big = torch.nn.functional.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)
    return write_video(path, big.clamp(0, 1).permute(0, 2, 3, 1).contiguous(), fps=Fraction(30))


def make_checkpoint(path: Path) -> Path:
    sys.path.insert(0, str(HERE / "tests"))
    from conftest import make_tiny_model, write_release_checkpoint

    return write_release_checkpoint(path, make_tiny_model(seed=1), make_tiny_model(seed=2))


def peak_rss_mib(repo: Path, arguments) -> float:
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "dva_model", "--quiet", *arguments]
    result = subprocess.run(command, cwd=repo, capture_output=True, text=True, env={"PYTHONPATH": str(repo),
                                                                                    "PATH": "/usr/bin:/bin"})
    if result.returncode != 0:
        raise SystemExit(f"edit failed:\n{result.stderr[-3000:]}")
    kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
    return kib / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--size", default="3840x2160")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--repo", type=Path, default=HERE, help="checkout whose dva_model runs (default: this one)")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    args.work.mkdir(parents=True, exist_ok=True)
    clip = args.work / f"clip_{width}x{height}_{args.frames}.mp4"
    if not clip.exists():
        make_clip(clip, args.frames, width, height)
    checkpoint = args.work / "tiny.ckpt"
    if not checkpoint.exists():
        make_checkpoint(checkpoint)
    out = args.work / "edited.mp4"
    peak = peak_rss_mib(args.repo.resolve(), ["edit", "--checkpoint", str(checkpoint), "--video", str(clip),
                                              "--out", str(out), "--steps", "2", "--device", "cpu"])
    print(f"{args.repo}: {args.frames} frames of {width}x{height}: peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
