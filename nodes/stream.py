"""DVA Decode + Paste to Video: the streaming end of the graph, for clips of any length.

It decodes every frame's x_T under the (edited) identity, builds the paste masks, pastes each face back
into its frame and writes the MP4 (with the source's audio and frame rate) chunk by chunk, in the
library's one edit pipeline (``dva_model.stages.render_people``): nothing the size of the clip is held
in memory. It needs the file-backed wires that a VIDEO-tracked DVA Face Align and DVA Encode make
(face tracks that name their video, an encoding stored under ComfyUI's temp folder with its crops).
"""

from comfy_api.v0_0_2 import io

from ._host import cancel_check, progress_callback, require_all, temp_file
from .encode import frames_per_call_input
from .paste import paste_setting_inputs
from .types import CATEGORY_VIDEO, Faces, IdentityType, Latent, Model

NODE = "DVA Decode + Paste to Video"
REQUIRES = (("kornia", "kornia"), ("av", "av"))


class DVADecodePasteVideo(io.ComfyNode):
    """Decode, paste back and encode the edited video in one streamed pass."""

    REQUIRES = REQUIRES

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DVADecodePasteVideo", display_name=NODE, category=CATEGORY_VIDEO, is_input_list=True,
            description=(
                "For long clips: decodes every frame with the identity, pastes the face back into the source "
                "video's frames through the face-parsing mask and writes the edited video with the source's "
                "audio and frame rate, a chunk at a time (memory does not grow with the clip's length). Needs "
                "DVA Face Align (or DVA Face Tracks) fed a VIDEO and the DVA Encode of it. Several people (a list "
                "from DVA Pick Face) are pasted in the list's order, the last on top. Ends in a core VIDEO for core "
                "Save Video."),
            inputs=[
                Model.Input("model", tooltip="The DVA model the clip was encoded with."),
                Latent.Input("latent", tooltip="The encoding from DVA Encode (of a VIDEO-tracked DVA Face Align)."),
                IdentityType.Input("identity", tooltip="The identity to decode with (edited or not)."),
                Faces.Input("faces", tooltip="The face tracks from DVA Face Align (fed a VIDEO)."),
                *paste_setting_inputs(),
                frames_per_call_input(),
            ],
            outputs=[io.Video.Output(display_name="video", tooltip=
                                     "The edited video (H.264 MP4 with the source's audio), for core Save Video.")],
        )

    @classmethod
    def execute(cls, model, latent, identity, faces, mask_preset, union_edited, dilate, feather, temporal_sigma,
                composite, frames_per_call) -> io.NodeOutput:
        # Every input is a list (is_input_list): latent, identity and faces hold one entry per person.
        require_all(NODE, REQUIRES)
        from contextlib import ExitStack

        from comfy_api.v0_0_2 import InputImpl
        from dva_model.stages import PersonEdit, render_people

        from .decode import check_same_model
        from .paste import paste_settings, single

        model, frames_per_call = single(model, "model"), single(frames_per_call, "frames_per_call")
        people = _people(latent, identity, faces)
        for person_latent, _, person_faces in people:
            _check_streamable(person_latent, person_faces)
            check_same_model(model, person_latent)
        if len({(f.info.path, f.indices) for _, _, f in people}) > 1:
            raise ValueError(f"{NODE} pastes people of one video: these faces were tracked in different videos or "
                             "frames; connect the faces of one DVA Pick Face (or one chain per video).")
        paste = paste_settings(mask_preset, union_edited, dilate, feather, temporal_sigma, composite)
        batch, callback = model.frames_per_call(frames_per_call), progress_callback()
        dva = model.acquire(frames_per_call=batch)
        out, first = temp_file("edited", ".mp4"), people[0][2]
        with ExitStack() as files:
            jobs = [PersonEdit(f, files.enter_context(l.open()), i.edited()) for l, i, f in people]
            render_people(first.info.path, out, jobs, dva, selection=first.selection, paste=paste, batch_size=batch,
                          chunk_frames=max(batch, CHUNK_FRAMES), decode_callback=callback,
                          paste_callback=cancel_check())  # pasting overlaps decoding: one bar, of the UNet calls
        return io.NodeOutput(InputImpl.VideoFromFile(str(out)))


CHUNK_FRAMES = 16


def _people(latents: list, identities: list, faces: list) -> list:
    """[(latent, identity, faces)] per person, in paste order (each person is decoded with their own identity)."""
    if not len(latents) == len(identities) == len(faces):
        raise ValueError(f"{NODE} got {len(faces)} people's faces, {len(latents)} encodings and {len(identities)} "
                         "identities; connect one chain (DVA Encode -> identity -> edits) from the same DVA Pick Face.")
    return list(zip(latents, identities, faces))


def _check_streamable(latent, faces) -> None:
    if not hasattr(latent, "open") or hasattr(faces, "crops"):
        raise ValueError(f"{NODE} streams from the video file: connect DVA Face Align's (or DVA Face Tracks') video "
                         "input (a core VIDEO, e.g. from core Load Video) instead of IMAGE frames, and the DVA Encode "
                         "of those faces; for IMAGE frames use DVA DDIM Decode + DVA Paste Back.")
    with latent.open() as file:
        if not file.has_crops or file.frames != int(faces.has_face.sum()):
            raise ValueError(f"This encoding does not belong to these faces ({file.frames} frames, the faces have "
                             f"{int(faces.has_face.sum())}); connect the DVA Encode made from this DVA Face Align.")
