"""ComfyUI entry point of ComfyUI-DVA: face editing in videos with Diffusion Video Autoencoders.

ComfyUI imports this file when it loads the pack and calls ``comfy_entrypoint`` (the V3 node API), whose
extension lists the nodes. It imports nothing heavy: every node module defers its model, video and
face-detection imports to the moment the node runs. The pack's folder goes on ``sys.path`` (appended, so
it never shadows ComfyUI's own modules) because the library ``dva_model`` imports itself by its
absolute name.
"""

import os
import sys

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
if _PACK_DIR not in sys.path:
    sys.path.append(_PACK_DIR)

if __package__:  # loaded as a package, as ComfyUI does (whatever the folder is called)
    from comfy_api.v0_0_2 import ComfyExtension  # noqa: E402

    from .nodes import NODE_LIST  # noqa: E402
    from .nodes._host import register_model_folder  # noqa: E402

    class DVAExtension(ComfyExtension):
        """The pack's nodes, registered with ComfyUI through the V3 API."""

        async def get_node_list(self):
            return list(NODE_LIST)

    async def comfy_entrypoint() -> ComfyExtension:
        register_model_folder()
        return DVAExtension()

    __all__ = ["comfy_entrypoint"]
# Imported as a lone module (pytest does this to a checkout whose folder name is not a Python
# identifier, e.g. "ComfyUI-DVA"), there is no host to register nodes with, and nothing is defined.
