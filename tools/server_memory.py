#!/usr/bin/env python3
"""Peak memory of a real ComfyUI server running a shipped API workflow on a clip and on it repeated.

    python tools/server_memory.py --comfyui /work/comfy/ComfyUI --python /work/comfy/venv/bin/python \
        --workflow example_workflows/api/long_clip_edit.json --video tests/.media/single_face.mp4 \
        --repeat 5 --work /tmp/server-memory --set steps=2

For each clip (the video, then the video repeated --repeat times, made as tools/edit_memory.py makes it)
a fresh server is started on the CPU with only this pack and the tests' tiny random checkpoint, the
workflow runs once, and the server's peak resident set size (VmHWM of /proc/<pid>/status) is read
before it is stopped. Prints one JSON line per clip and the long/short ratio.
"""

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tools import comfy_server, edit_memory, run_workflow as api  # noqa: E402

STARTUP_TIMEOUT_S = 600
RUN_TIMEOUT_S = 7200
CHECKPOINT_NAME = "dva_tiny.safetensors"
CLASSIFIER_NAME = "classifier_random.ckpt"


def random_classifier(path: Path) -> Path:
    """A random attribute classifier in the release's layout (as the tests make one)."""
    sys.path.insert(0, str(REPO / "tests"))
    from test_workflows import _release_classifier

    return path if path.is_file() else _release_classifier(path)


def _peak_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc status")


def run_once(args, checkpoint: Path, video: Path, name: str) -> dict:
    """A fresh server, one run of the workflow on ``video``; its peak RSS and wall time."""
    root = args.work / f"server_{name}"
    base, packs, models = root / "base", root / "packs", root / "models"
    for folder in (base / "custom_nodes", packs, models):
        folder.mkdir(parents=True, exist_ok=True)
    link = packs / "ComfyUI-DVA"
    if link.is_symlink() or link.exists():  # a folder reused from a run of another checkout
        link.unlink()
    link.symlink_to(REPO)
    for name, target in ((CHECKPOINT_NAME, checkpoint), (CLASSIFIER_NAME, args.work / CLASSIFIER_NAME)):
        if not (models / name).exists():
            (models / name).symlink_to(target)
    paths = root / "extra_model_paths.yaml"
    paths.write_text(f"dva_memory:\n  custom_nodes: {packs}\n  dva: {models}\n")
    try:
        with comfy_server.running_comfyui(args.comfyui, args.python, base=base, paths=paths, log=root / "comfy.log",
                                          startup_timeout_s=STARTUP_TIMEOUT_S) as server:
            workflow = json.loads(args.workflow.read_text())
            api.set_video(workflow, api.upload(server.url, video))
            api.set_inputs(workflow, [f"checkpoint={CHECKPOINT_NAME}", f"classifier={CLASSIFIER_NAME}"] + args.set)
            idle_kb = _peak_kb(server.process.pid)
            start = time.perf_counter()
            history = api.run_prompt(server.url, workflow, timeout_s=RUN_TIMEOUT_S)
            seconds = time.perf_counter() - start
            api.check_success(history)
            peak_kb = _peak_kb(server.process.pid)
    except comfy_server.ServerDidNotStart as error:
        raise SystemExit(str(error))
    from dva_model.formats.video import probe

    frames = probe(video).frame_count
    return {"video": str(video), "frames": frames, "server_peak_rss_mb": round(peak_kb / 1024, 1),
            "server_rss_before_run_mb": round(idle_kb / 1024, 1), "run_s": round(seconds, 1),
            "s_per_frame": round(seconds / frames, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", type=Path, required=True, help="a ComfyUI checkout (main.py)")
    parser.add_argument("--python", default=sys.executable, help="ComfyUI's Python")
    parser.add_argument("--workflow", type=Path, required=True, help="an API-format workflow of this pack")
    parser.add_argument("--video", type=Path, required=True, help="the short clip")
    parser.add_argument("--repeat", type=int, default=5, help="the long clip is the short one this many times")
    parser.add_argument("--work", type=Path, required=True, help="folder for servers, the model and the long clip")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="workflow input override")
    parser.add_argument("--only", choices=("short", "long"), help="measure one clip only")
    args = parser.parse_args()
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    checkpoint = edit_memory.tiny_checkpoint(args.work / CHECKPOINT_NAME)
    random_classifier(args.work / CLASSIFIER_NAME)
    video = args.video.resolve()
    clips = {"short": video, "long": edit_memory.repeated_clip(video, args.work / f"x{args.repeat}.mp4", args.repeat)}
    results = {}
    for name, clip in clips.items():
        if args.only in (None, name):
            results[name] = run_once(args, checkpoint, clip, name)
            print(json.dumps(results[name]), flush=True)
    if len(results) == 2:
        ratio = results["long"]["server_peak_rss_mb"] / results["short"]["server_peak_rss_mb"]
        print(json.dumps({"long_over_short_peak": round(ratio, 3)}))


if __name__ == "__main__":
    main()
