"""A preview of the face tracks for choosing whom to edit: each face's box and track id drawn on the frames.

Detected faces get a solid box; faces filled in over a short miss a thin one. Colours follow the track
id, so one person keeps one colour through the clip.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from dva_model.face.keyframe import landmark_box
from dva_model.face.multitrack import PersonTrack

# Distinct, saturated colours (RGB), cycled by track id.
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230))
LABEL_FRACTION = 0.25  # label height as a fraction of the face box's height
MIN_LABEL_PX = 12
DETECTED_WIDTH_FRACTION = 0.03  # box line width for a detected face, in face box heights
MIN_LINE_PX = 1


def track_colour(track_id: int) -> tuple[int, int, int]:
    """The RGB colour of a track id in previews."""
    return PALETTE[track_id % len(PALETTE)]


def draw_tracks(images: np.ndarray, rows: Sequence[int], people: Sequence[PersonTrack]) -> np.ndarray:
    """Draw every person's face box and track id on frames.

    images: [n, H, W, 3] uint8 RGB (not modified); rows: [n] the frames' positions in the tracks (0..N-1).
    Returns a new [n, H, W, 3] uint8 array.
    """
    from PIL import Image, ImageDraw, ImageFont

    out = []
    for image, row in zip(np.asarray(images), rows):
        canvas = Image.fromarray(image)
        draw = ImageDraw.Draw(canvas)
        for person in people:
            track = person.track
            if not track.has_face[row]:
                continue
            box = landmark_box(track.landmarks[row])
            height = max(box[3] - box[1], 1.0)
            width = max(MIN_LINE_PX, round(height * DETECTED_WIDTH_FRACTION)) if track.detected[row] else MIN_LINE_PX
            colour = track_colour(person.track_id)
            draw.rectangle([float(v) for v in box], outline=colour, width=width)
            font = ImageFont.load_default(size=max(MIN_LABEL_PX, round(height * LABEL_FRACTION)))
            draw.text((float(box[0]), float(box[1]) - width), str(person.track_id), fill=colour, font=font,
                      anchor="lb", stroke_width=1, stroke_fill=(0, 0, 0))
        out.append(np.asarray(canvas))
    return np.stack(out) if out else np.asarray(images).copy()
