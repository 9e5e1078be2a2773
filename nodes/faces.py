"""Several people: FaceTracks follows every face (with a numbered preview), PickFace aligns one of them.

For two people, use two PickFace nodes on the same tracks, each with its own Encode -> edit -> Decode ->
Paste Back chain, and feed the first Paste Back's frames into the second: faces are pasted in that order.
"""

from comfy_api.v0_0_2 import io

from ._host import crops_to_image, intermediate_device, progress_callback, require_all
from .align import CHUNK_FRAMES, REQUIRES, _landmarker, _work_device
from .types import CATEGORY_VIDEO, Faces

TRACKS = "DVA_FACE_TRACKS"
Tracks = io.Custom(TRACKS)
NODE_TRACKS = "DVA Face Tracks"
NODE_PICK = "DVA Pick Face"


class DVAFaceTracks(io.ComfyNode):
    """Finds and tracks every face in the frames; a preview shows each track's number."""

    REQUIRES = REQUIRES

    @classmethod
    def define_schema(cls) -> io.Schema:
        from dva_model.face.landmarks import DETECTORS, LANDMARK_MODELS
        from dva_model.face.multitrack import FACE_ORDERS, MultiTrackConfig

        return io.Schema(
            node_id="DVAFaceTracks", display_name=NODE_TRACKS, category=CATEGORY_VIDEO,
            description=(
                "Tracks every face through the frames with a stable number per person (a person who leaves and "
                "comes back keeps their number, recognised by dlib's face recogniser). The preview draws each "
                "track's box and number; pick the people to edit with DVA Pick Face."),
            inputs=[
                io.Image.Input("frames", tooltip="Video frames [N, H, W, 3] in 0..1."),
                io.Combo.Input("detector", options=list(DETECTORS), default=next(iter(DETECTORS)),
                               tooltip="Face detector (as DVA Face Align)."),
                io.Combo.Input("landmarks", options=list(LANDMARK_MODELS), default=next(iter(LANDMARK_MODELS)),
                               tooltip="68-point landmark model (as DVA Face Align)."),
                io.Combo.Input("face_order", options=list(FACE_ORDERS), default=FACE_ORDERS[0], tooltip=
                               "How the tracks are numbered: 'largest' face first, or 'left_to_right'."),
                io.Int.Input("max_gap", default=MultiTrackConfig().max_gap, min=0, max=1000, step=1, tooltip=
                             "A face missing for at most this many frames keeps its track (filled in); after a "
                             "longer absence its frames are left untouched."),
            ],
            outputs=[
                Tracks.Output(display_name="tracks", tooltip="Every face track; connect to DVA Pick Face."),
                io.Image.Output(display_name="preview", tooltip="The frames with each track's box and number."),
            ],
        )

    @classmethod
    def execute(cls, frames, detector, landmarks, face_order, max_gap) -> io.NodeOutput:
        require_all(NODE_TRACKS, REQUIRES)
        from dva_model.face.multitrack import MultiTrackConfig
        from dva_model.people import preview_in_memory, track_people_in_memory

        people = track_people_in_memory(frames, _landmarker(detector, landmarks), order=face_order,
                                        config=MultiTrackConfig(max_gap=max_gap), chunk_size=CHUNK_FRAMES,
                                        callback=progress_callback())
        return io.NodeOutput(people, preview_in_memory(frames, people).to(intermediate_device()))


class DVAPickFace(io.ComfyNode):
    """Aligns one tracked person (by number, or by a reference photo) for the edit chain."""

    REQUIRES = REQUIRES

    @classmethod
    def define_schema(cls) -> io.Schema:
        from dva_model.constants import CROP_SIZE
        from dva_model.face.align import ALIGN_METHODS, SIGMA_AXES, SIGMA_CENTRE

        return io.Schema(
            node_id="DVAPickFace", display_name=NODE_PICK, category=CATEGORY_VIDEO,
            description=(
                "Picks one person from DVA Face Tracks, by track number (see its preview) or, when a reference "
                "photo is connected, the person nearest in identity to the photo, and aligns their face as DVA "
                "Face Align does. Frames where the person is absent are flagged and pass through Paste Back "
                "untouched, as do all other people."),
            inputs=[
                io.Image.Input("frames", tooltip="The same frames DVA Face Tracks saw."),
                Tracks.Input("tracks", tooltip="From DVA Face Tracks."),
                io.Int.Input("face", default=0, min=0, max=99, step=1, tooltip=
                             "Track number of the person (the preview's numbers); ignored when a reference is connected."),
                io.Int.Input("crop_size", default=CROP_SIZE, min=64, max=1024, step=8, tooltip=
                             "Side of the aligned crops in pixels; must equal the model's image size (256 released)."),
                io.Float.Input("sigma_centre", default=SIGMA_CENTRE, min=0.0, max=20.0, step=0.1,
                               tooltip="Temporal smoothing of the crop centre, in frames (0 = off)."),
                io.Float.Input("sigma_axes", default=SIGMA_AXES, min=0.0, max=20.0, step=0.1,
                               tooltip="Temporal smoothing of the crop's size and rotation, in frames (0 = off)."),
                io.Combo.Input("method", options=list(ALIGN_METHODS), default=next(iter(ALIGN_METHODS)),
                               tooltip="'direct' or 'release' crops (as DVA Face Align)."),
                io.Image.Input("reference", optional=True, tooltip=
                               "A photo of the person to pick (the first image of the batch); overrides 'face'."),
            ],
            outputs=[
                Faces.Output(display_name="faces", tooltip="The person's aligned crops, quads and face flags."),
                io.Image.Output(display_name="crops", tooltip="The aligned crops as IMAGE, for previewing."),
            ],
        )

    @classmethod
    def execute(cls, frames, tracks, face, crop_size, sigma_centre, sigma_axes, method,
                reference=None) -> io.NodeOutput:
        require_all(NODE_PICK, REQUIRES)
        from dva_model.face.align import AlignConfig
        from dva_model.formats.image_io import to_uint8
        from dva_model.people import align_person_in_memory, pick_person

        photo = None if reference is None else to_uint8(reference[0])
        person = pick_person(tracks, face, photo, landmarker=_landmarker("dlib", "dlib") if photo is not None else None)
        config = AlignConfig(size=crop_size, sigma_centre=sigma_centre, sigma_axes=sigma_axes, method=method)
        faces = align_person_in_memory(frames, person, align=config, chunk_size=CHUNK_FRAMES, device=_work_device())
        return io.NodeOutput(faces, crops_to_image(faces.crops))
