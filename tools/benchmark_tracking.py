"""Speed and accuracy of face tracking: seconds per frame and eye-position error against full-size detection.

    python tools/benchmark_tracking.py --video tests/.media/single_face.mp4 --work /tmp/tracking

For the clip as it is and upscaled to 1080p (bicubic, written once with PyAV into --work), runs the
first alignment pass (decode, detect, landmarks) with:
    full-size   dlib HOG on the full frame, every frame (the reference for the errors)
    before      the previous default: detection on frames shrunk to at most 1280 px, every frame
    detect-640  detection on frames shrunk to at most 640 px, landmarks at full resolution
    track-K     detect-640 on every K-th frame, landmarks-following boxes in between (re-detect on slip)
and prints s/frame and the eye-centre error (mean of the 6 points of each eye) in frame pixels and in
pixels of the 256 aligned crop (where the variant's smoothed quad puts the full-size run's eyes).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from dva_model.face.align import AlignConfig, compute_quads, crop_homographies
from dva_model.face.keyframe import keyframe_landmarker
from dva_model.face.landmarks import DlibDetector, DlibLandmarks, FaceLandmarker, find_dlib_landmark_model
from dva_model.formats.video import VideoWriter, iter_frames, probe
from dva_model.pipeline import find_faces

LEFT_EYE, RIGHT_EYE = slice(36, 42), slice(42, 48)  # iBUG 68-point indices
FULL_SIZE = 1 << 20  # a max_side no frame reaches


def upscale(path: Path, out: Path, height: int) -> Path:
    """Write ``path`` resized to ``height`` rows (bicubic, width to keep the aspect) as a high-quality MP4."""
    if out.is_file():
        return out
    info = probe(path)
    width = round(info.width * height / info.height / 2) * 2
    with VideoWriter(out, fps=info.fps, width=width, height=height, crf=12) as writer:
        for _, frames in iter_frames(path, chunk_size=8):
            big = torch.nn.functional.interpolate(frames.permute(0, 3, 1, 2), size=(height, width), mode="bicubic",
                                                  align_corners=False)
            writer.write(big.clamp(0, 1).permute(0, 2, 3, 1))
    return out


def eyes(landmarks: np.ndarray) -> np.ndarray:
    """[N, 68, 2] -> [N, 2, 2] centres of the left and right eye."""
    return np.stack([landmarks[:, LEFT_EYE].mean(1), landmarks[:, RIGHT_EYE].mean(1)], axis=1)


def to_crop(points: np.ndarray, quads: np.ndarray) -> np.ndarray:
    """Frame points [N, K, 2] -> crop pixels [N, K, 2] through each frame's quad."""
    h = crop_homographies(quads)  # [N, 3, 3]
    homogeneous = np.concatenate([points, np.ones(points.shape[:2] + (1,))], axis=2)  # [N, K, 3]
    mapped = np.einsum("nij,nkj->nki", h, homogeneous)
    return mapped[..., :2] / mapped[..., 2:]


def run(path: Path, landmarker: FaceLandmarker) -> tuple[float, np.ndarray, np.ndarray, int]:
    start = time.perf_counter()
    _, indices, track = find_faces(path, landmarker)
    seconds = time.perf_counter() - start
    quads = compute_quads(track.landmarks, track.has_face, config=AlignConfig())
    return seconds / len(track.detected), track.landmarks, quads, int(track.detected.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, default=Path("tests/.media/single_face.mp4"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/dva-tracking"))
    parser.add_argument("--every", type=int, default=5, help="K of track-K")
    parser.add_argument("--height", type=int, default=1080, help="the upscaled copy's height")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # dlib is single-threaded; keep the decode comparable across runs
    predictor = DlibLandmarks(find_dlib_landmark_model())
    videos = {f"{probe(args.video).height}p": args.video,
              f"{args.height}p": upscale(args.video, args.work / f"upscaled_{args.height}p.mp4", args.height)}
    variants = {
        "full-size": lambda: FaceLandmarker(detector=DlibDetector(max_side=FULL_SIZE), predictor=predictor),
        "before": lambda: FaceLandmarker(detector=DlibDetector(), predictor=predictor),
        "detect-640": lambda: FaceLandmarker(detector=DlibDetector(max_side=640), predictor=predictor),
        f"track-{args.every}": lambda: keyframe_landmarker(
            FaceLandmarker(detector=DlibDetector(max_side=640), predictor=predictor), every=args.every),
    }
    results = {}
    for label, path in videos.items():
        reference = None
        for name, make in variants.items():
            s_per_frame, landmarks, quads, detected = run(path, make())
            row = {"s_per_frame": round(s_per_frame, 4), "frames_with_face": detected}
            if reference is None:
                reference = (landmarks, quads)
            else:
                ref_landmarks, ref_quads = reference
                frame_error = np.linalg.norm(eyes(landmarks) - eyes(ref_landmarks), axis=-1)
                crop_error = np.linalg.norm(to_crop(eyes(ref_landmarks), quads) - to_crop(eyes(ref_landmarks), ref_quads),
                                            axis=-1)
                row.update(eye_error_frame_px_mean=round(float(np.nanmean(frame_error)), 3),
                           eye_error_frame_px_max=round(float(np.nanmax(frame_error)), 3),
                           eye_error_crop_px_mean=round(float(np.nanmean(crop_error)), 3),
                           eye_error_crop_px_max=round(float(np.nanmax(crop_error)), 3))
            results[f"{label} {name}"] = row
            print(f"{label:>6} {name:<11} " + " ".join(f"{k}={v}" for k, v in row.items()), flush=True)  # noqa: T201
    print(json.dumps(results, indent=1))  # noqa: T201


if __name__ == "__main__":
    main()
