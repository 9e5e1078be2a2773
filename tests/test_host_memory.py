"""The streamed pipeline's malloc settings: freed frame buffers really go back to the OS.

Each case runs in its own interpreter, since the settings are process-wide and one-way.
"""

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc settings are glibc's")

# A chunked pass as the pipeline makes one: frame-sized buffers (a 640x360 float frame, 2.6 MiB) freed
# after use, with small long-lived objects allocated between them (so the holes they leave cannot merge
# into the top of the heap and be trimmed by free itself). One frame freed first raises glibc's dynamic
# mmap threshold above the frame size, as the first chunks of a real run do.
SCRIPT = """
import json, sys
import numpy as np
sys.path.insert(0, {repo!r})
from dva_model.host_memory import limit_heap_growth, trim_heap

def rss_kb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

if {limit}:
    assert limit_heap_growth()
first = np.ones((360, 640, 3), np.float32)
del first
before = rss_kb()
frames, keep = [], []
for _ in range(40):
    frames.append(np.ones((360, 640, 3), np.float32))
    keep.append(np.ones(4096))  # 32 KiB that stay
del frames
after_free = rss_kb()
trimmed = trim_heap()
print(json.dumps({{"freed_kb": after_free - before, "trimmed_kb": rss_kb() - before, "trimmed": trimmed}}))
"""


def _run(limit: bool) -> dict:
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(repo=str(REPO), limit=limit)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_freed_frames_stay_resident_without_the_settings_and_leave_with_them():
    """Without the settings, the 40 freed frames (~105 MiB) stay resident; with the fixed threshold they
    leave as they are freed; trim_heap alone also hands them back."""
    default, limited = _run(limit=False), _run(limit=True)
    assert default["freed_kb"] > 90_000, "the control case: glibc keeps the freed frames"
    assert limited["freed_kb"] < 10_000
    assert default["trimmed"] and default["trimmed_kb"] < 10_000
