"""The pack's ComfyUI nodes (V3 API, ``comfy_api.v0_0_2``), thin adapters over ``dva_model``.

Modules are imported one by one: a module that fails to import disables its own nodes (logged with the
reason), never the whole pack. Node modules import nothing heavy at import time; a node whose optional
package is missing still loads and fails, when run, with one sentence naming the package to install
(missing ones are also listed in the log at start-up). ``NODE_LIST`` is what the pack's
``comfy_entrypoint`` hands ComfyUI; ``NODES_BY_ID`` maps node ids to those classes.
"""

import importlib
import logging

from ._host import missing_packages

log = logging.getLogger(__name__)

# module -> node ids; node ids carry the DVA prefix so they never clash with other packs.
MODULES = {
    "load": ("DVAModelLoader", "DVAClassifierLoader"),
    "video": ("DVAVideoLoad",),
    "align": ("DVAFaceAlign",),
    "faces": ("DVAFaceTracks", "DVAPickFace"),
    "encode": ("DVAEncode", "DVASaveLatent", "DVALoadLatent"),
    "edit": ("DVAIdentityAverage", "DVAAttributeEdit"),
    "decode": ("DVADDIMDecode",),
    "paste": ("DVAPasteBack",),
    "stream": ("DVADecodePasteVideo",),
    "clip_edit": ("DVACLIPLoader", "DVACLIPEdit", "DVAApplyIdentityDelta", "DVASaveIdentityDelta",
                  "DVALoadIdentityDelta"),
}

NODES_BY_ID = {}

for _module_name, _node_ids in MODULES.items():
    try:
        _module = importlib.import_module(f".{_module_name}", __name__)
    except Exception as error:  # a broken module costs its own nodes only
        log.error("ComfyUI-DVA: nodes %s are disabled: %s", ", ".join(_node_ids), error)
        continue
    for _node_id in _node_ids:
        _node = getattr(_module, _node_id)
        NODES_BY_ID[_node_id] = _node
        _missing = missing_packages(getattr(_node, "REQUIRES", ()))
        if _missing:
            log.warning("ComfyUI-DVA: %s needs %s (pip install %s); it fails until then.",
                        _node_id, ", ".join(_missing), " ".join(_missing))

NODE_LIST = list(NODES_BY_ID.values())
