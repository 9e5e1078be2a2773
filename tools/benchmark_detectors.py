"""Detection speed of the three face detector backends side by side, and of one- vs every-face tracking.

    python tools/benchmark_detectors.py --video tests/.media/multi_face_pan.mp4 --frames 12 --work /tmp/detectors

Writes the stand-in weights of ``dva_model.testing`` into --work (no download) and times, alternating
backends frame by frame (the machine is shared: interleaving spreads the noise evenly):
    dlib            HOG on frames shrunk to at most 640 px (the default backend)
    face_alignment  S3FD (the real VGG-16 network; stand-in weights cost what the real ones do)
    insightface     SCRFD's package path (letterbox, blob, ONNX Runtime, decode, NMS) on a stand-in graph
                    that is far lighter than det_10g: this is the package's overhead, not det_10g's speed
then the landmark cost per face (dlib's shape predictor, FAN) and tracking one face vs every face
(``track_faces`` vs ``track_people`` with the dlib recogniser) on the clip. Prints a JSON table:
median and range of seconds per frame.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from dva_model.face.landmarks import make_landmarker
from dva_model.face.multitrack import track_people
from dva_model.face.recognition import DlibRecogniser
from dva_model.face.tracking import track_faces
from dva_model.formats.video import FrameSelection, read_frames
from dva_model.testing import write_face_alignment_standins, write_scrfd_standin


def _stats(seconds: list[float]) -> dict:
    return {"median_s": round(float(np.median(seconds)), 4), "min_s": round(min(seconds), 4),
            "max_s": round(max(seconds), 4), "runs": len(seconds)}


def _timed(function, *args) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--work", type=Path, required=True, help="folder for the stand-in weights")
    args = parser.parse_args()

    os.environ["TORCH_HOME"] = str(args.work / "torch")
    write_face_alignment_standins(args.work / "torch")
    insightface_dir = args.work / "insightface"
    write_scrfd_standin(insightface_dir / "models" / "buffalo_l" / "det_10g.onnx")
    frames, _ = read_frames(args.video, selection=FrameSelection(max_frames=args.frames))
    images = (frames * 255).round().to(torch.uint8).numpy()

    backends = {
        "dlib": make_landmarker(detector="dlib", landmarks="dlib"),
        "face_alignment": make_landmarker(detector="face_alignment", landmarks="face_alignment"),
        "insightface": make_landmarker(detector="insightface", landmarks="dlib", insightface_dir=insightface_dir),
    }
    for landmarker in backends.values():
        landmarker.detector.detect(images[0])  # warm-up (ONNX Runtime session, torch kernels)
    detect = {name: [] for name in backends}
    for image in images:
        for name, landmarker in backends.items():
            detect[name].append(_timed(landmarker.detector.detect, image)[0])

    dlib_boxes = backends["dlib"].detector.detect(images[0])
    landmark_times = {"dlib": [], "face_alignment": []}
    for image in images[:3]:
        for name in landmark_times:
            landmark_times[name].append(_timed(backends[name].predictor.landmarks, image, dlib_boxes[0])[0])

    recogniser = DlibRecogniser()
    one, _ = _timed(track_faces, [images], backends["dlib"])
    every, people = _timed(lambda: track_people([images], backends["dlib"], recogniser=recogniser))
    report = {
        "video": str(args.video), "frames": len(images), "size": list(images.shape[1:3]),
        "faces_dlib_finds_in_frame_0": len(dlib_boxes), "torch_threads": torch.get_num_threads(),
        "detect_s_per_frame": {name: _stats(times) for name, times in detect.items()},
        "landmarks_s_per_face": {name: _stats(times) for name, times in landmark_times.items()},
        "tracking_s_per_frame": {"one_face": round(one / len(images), 4),
                                 "every_face_with_recogniser": round(every / len(images), 4),
                                 "tracks": len(people)},
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
