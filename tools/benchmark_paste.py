"""Time and peak host memory of pasting one chunk of frames back (``dva_model.face.paste.paste_back``).

    python tools/benchmark_paste.py --width 3840 --height 2160 --frames 8 --face 600

Random frames, crops and masks; one face of ``--face`` pixels per frame, drifting slightly. Prints the
seconds for the chunk and the peak resident memory the paste added, also as a multiple of the chunk's
float frames (what a caller must hold anyway). Run it in a fresh process per setting (the peak is the
process's).
"""

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dva_model.face.align import quads_from_axes  # noqa: E402
from dva_model.face.paste import paste_back  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=3840)
    parser.add_argument("--height", type=int, default=2160)
    parser.add_argument("--frames", type=int, default=8, help="frames in the chunk")
    parser.add_argument("--face", type=float, default=600.0, help="side of the face's quad in pixels")
    parser.add_argument("--crop", type=int, default=256, help="side of the crops")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    n, size = args.frames, args.crop
    frames = torch.rand(n, args.height, args.width, 3, generator=generator)
    edited = torch.rand(n, 3, size, size, generator=generator) * 2 - 1
    masks = torch.rand(n, 1, size, size, generator=generator)
    half = args.face / 2
    centres = np.array([[args.width / 2 + 3 * i, args.height / 2] for i in range(n)])
    quads = quads_from_axes(centres, np.array([[half, half / 15]] * n), np.array([[-half / 15, half]] * n))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    paste_back(frames, edited, masks, quads)
    seconds = time.perf_counter() - start
    added = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024  # ru_maxrss is in KiB
    chunk = frames.numel() * frames.element_size()
    print(f"{n} frames {args.width}x{args.height}, {args.face:.0f} px face: {seconds:.2f} s "
          f"({seconds / n * 1000:.0f} ms/frame), peak added {added / 2**30:.2f} GiB = {added / chunk:.1f}x "
          f"the chunk's float frames ({chunk / 2**30:.2f} GiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
