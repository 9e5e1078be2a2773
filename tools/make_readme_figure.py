"""Draw docs/images/pipeline.png: what the face pipeline does to a frame, on a real photograph.

    python tools/make_readme_figure.py [--out docs/images/pipeline.png]

Panels: the frame with dlib's 68 landmarks and the FFHQ quad; the aligned 256 crop the model sees; the
crop warped back into the frame (the only pixels an edit may touch). Uses scikit-image's bundled
astronaut photograph (NASA, public domain) and dlib's real landmark model; no DVA weights are needed.
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from dva_model.face.align import align_frames, compute_quads, warp_to_frames
from dva_model.face.landmarks import make_landmarker
from dva_model.face.tracking import landmarks_of_image

PANEL = 320
MARGIN = 16
TITLE = 28


def _panel(image: Image.Image, title: str) -> Image.Image:
    canvas = Image.new("RGB", (PANEL, PANEL + TITLE), "white")
    fitted = image.copy()
    fitted.thumbnail((PANEL, PANEL))
    canvas.paste(fitted, ((PANEL - fitted.width) // 2, TITLE + (PANEL - fitted.height) // 2))
    ImageDraw.Draw(canvas).text((8, 8), title, fill="black", font=ImageFont.load_default())
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/images/pipeline.png"))
    args = parser.parse_args()

    from skimage import data

    frame = data.astronaut()  # [512, 512, 3] uint8
    landmarks = landmarks_of_image(frame, make_landmarker())
    quads = compute_quads(landmarks[None])  # [1, 4, 2]
    frames = torch.from_numpy(frame).float().div(255)[None]  # [1, H, W, 3] in [0, 1]
    crop = align_frames(frames, quads)  # [1, 3, 256, 256] in [-1, 1]

    annotated = Image.fromarray(frame)
    draw = ImageDraw.Draw(annotated)
    for x, y in landmarks:
        draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=(255, 220, 0))
    draw.polygon([tuple(p) for p in quads[0]], outline=(0, 255, 0), width=3)

    crop_image = Image.fromarray(((crop[0].permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).byte().numpy())
    ones = torch.ones(1, 1, *crop.shape[-2:])
    coverage = warp_to_frames(ones, quads, frame.shape[0], frame.shape[1])[0].permute(1, 2, 0).numpy()  # [H, W, 1]
    shown = (frame * (0.35 + 0.65 * coverage)).astype(np.uint8)

    panels = [
        _panel(annotated, "1. dlib 68 landmarks + FFHQ quad"),
        _panel(crop_image, "2. aligned 256x256 crop (model input)"),
        _panel(Image.fromarray(shown), "3. where the edited crop is pasted"),
    ]
    figure = Image.new("RGB", (3 * PANEL + 4 * MARGIN, PANEL + TITLE + 2 * MARGIN), "white")
    for index, panel in enumerate(panels):
        figure.paste(panel, (MARGIN + index * (PANEL + MARGIN), MARGIN))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.save(args.out)


if __name__ == "__main__":
    main()
