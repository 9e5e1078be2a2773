#!/usr/bin/env python3
"""Peak host memory and seconds per frame of ``python -m dva_model edit`` on a clip and on it repeated.

    python tools/edit_memory.py --video tests/.media/single_face.mp4 --repeat 5 --work /tmp/edit-memory

Builds (once, in --work) the tiny random 256-px checkpoint of the tests (tests/conftest.py's shape) and
the clip concatenated --repeat times with its audio (PyAV: video re-encoded as H.264, audio as AAC),
then runs the edit on both under ``/usr/bin/time -v`` and prints, per clip, the frame count, the
maximum resident set size, the wall time, seconds per frame and the long/short peak ratio as JSON.
--repo runs another checkout's code (e.g. an older commit, for a before/after table).
"""

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any folder

TINY_WIDTH = 8  # UNet channels of the tests' tiny model
TINY_SIZE = 256


def tiny_checkpoint(path: Path) -> Path:
    """The tests' tiny model (random weights, UNet width 8 at 256 px) as .safetensors."""
    from dva_model.formats.checkpoint import save_model
    from dva_model.model import DVAConfig, DVAModel
    from dva_model.testing import randomize_, tiny_unet_config

    if path.is_file():
        return path
    unet = dataclasses.replace(tiny_unet_config(), image_size=TINY_SIZE, model_channels=TINY_WIDTH,
                               channel_mult=(1, 1, 2, 2), attention_resolutions=(TINY_SIZE // 8,))
    model = DVAModel(config=DVAConfig(unet=unet))
    randomize_(model, seed=1)
    return save_model(path, model.eval())


def repeated_clip(source: Path, target: Path, repeat: int) -> Path:
    """``source`` played ``repeat`` times in a row, with its audio, as an MP4 (H.264 + AAC)."""
    import av

    if target.is_file():
        return target
    with av.open(str(source)) as container:
        stream = container.streams.video[0]
        fps = Fraction(stream.average_rate)
        images = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    with av.open(str(source)) as container:
        audio = container.streams.audio[0] if container.streams.audio else None
        rate = audio.codec_context.sample_rate if audio else 0
        resampler = av.AudioResampler(format="fltp", layout="stereo", rate=rate) if audio else None
        sound = [f for frame in container.decode(audio) for f in resampler.resample(frame)] if audio else []
    partial = target.with_name(target.name + ".part.mp4")
    with av.open(str(partial), mode="w") as output:
        video = output.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = images[0].shape[1], images[0].shape[0], "yuv420p"
        aac = output.add_stream("aac", rate=rate) if audio else None
        for _ in range(repeat):
            for image in images:
                output.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        output.mux(video.encode(None))
        if aac is not None:
            samples = 0
            for _ in range(repeat):
                for frame in sound:
                    copy = av.AudioFrame.from_ndarray(frame.to_ndarray(), format="fltp", layout="stereo")
                    copy.sample_rate, copy.pts = rate, samples
                    samples += frame.samples
                    output.mux(aac.encode(copy))
            output.mux(aac.encode(None))
    os.replace(partial, target)
    return target


def measure(repo: Path, checkpoint: Path, video: Path, out: Path, steps: int) -> dict:
    """Run the edit once under /usr/bin/time -v: peak RSS (MB), wall seconds, s/frame."""
    from dva_model.formats.video import probe

    command = ["/usr/bin/time", "-v", sys.executable, "-m", "dva_model", "--quiet", "edit", "--checkpoint",
               str(checkpoint), "--video", str(video), "--out", str(out), "--steps", str(steps), "--device", "cpu"]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=repo, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"edit failed on {video}:\n{result.stderr[-3000:]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
    frames = probe(video).frame_count
    return {"video": str(video), "frames": frames, "peak_rss_mb": round(peak_kb / 1024, 1),
            "wall_s": round(seconds, 1), "s_per_frame": round(seconds / frames, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, required=True, help="the short clip (with a face)")
    parser.add_argument("--repeat", type=int, default=5, help="the long clip is the short one this many times")
    parser.add_argument("--work", type=Path, required=True, help="folder for the model, the long clip, outputs")
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1],
                        help="checkout whose dva_model runs the edit (default: this one)")
    parser.add_argument("--steps", type=int, default=2, help="DDIM steps (default 2)")
    parser.add_argument("--only", choices=("short", "long"), help="measure one clip only")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    checkpoint = tiny_checkpoint(args.work / "dva_tiny.safetensors")
    args.video = args.video.resolve()
    clips = {"short": args.video, "long": repeated_clip(args.video, args.work / f"x{args.repeat}.mp4", args.repeat)}
    results = {}
    for name, video in clips.items():
        if args.only in (None, name):
            results[name] = measure(args.repo, checkpoint, video, args.work / f"edited_{name}.mp4", args.steps)
            print(json.dumps(results[name]), flush=True)
    if len(results) == 2:
        print(json.dumps({"long_over_short_peak": round(results["long"]["peak_rss_mb"] / results["short"]["peak_rss_mb"], 3)}))


if __name__ == "__main__":
    main()
