"""ComfyUI entry point of ComfyUI-DVA: face editing in videos with Diffusion Video Autoencoders.

ComfyUI imports this file when it loads the pack. It imports nothing heavy: every node module defers
its model, video and face-detection imports to the moment the node runs. The pack's folder goes on
``sys.path`` (appended, so it never shadows ComfyUI's own modules) because the library ``dva_model``
imports itself by its absolute name.
"""

import os
import sys

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
if _PACK_DIR not in sys.path:
    sys.path.append(_PACK_DIR)

if __package__:  # loaded as a package, as ComfyUI does (whatever the folder is called)
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402
    from .nodes._host import register_model_folder  # noqa: E402

    register_model_folder()
else:
    # Imported as a lone module: pytest does this to a checkout whose folder name is not a Python
    # identifier (e.g. "ComfyUI-DVA"). There is no host to register nodes with.
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
