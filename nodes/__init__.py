"""The pack's ComfyUI nodes (V1 API: NODE_CLASS_MAPPINGS), thin adapters over ``dva_model``.

Modules are imported one by one: a module that fails to import disables its own nodes (logged with the
reason), never the whole pack. Node modules import nothing heavy at import time; a node whose optional
package is missing still loads and fails, when run, with one sentence naming the package to install
(missing ones are also listed in the log at start-up).
"""

import importlib
import logging

from ._host import missing_packages

log = logging.getLogger(__name__)

# module -> {node id: display name}; node ids carry the DVA prefix so they never clash with other packs.
NODES = {
    "load": {"DVAModelLoader": "DVA Model Loader", "DVAClassifierLoader": "DVA Classifier Loader"},
    "video": {"DVAVideoLoad": "DVA Video Load"},
    "align": {"DVAFaceAlign": "DVA Face Align"},
    "encode": {"DVAEncode": "DVA Encode", "DVASaveLatent": "DVA Save Latent", "DVALoadLatent": "DVA Load Latent"},
    "edit": {"DVAIdentityAverage": "DVA Identity Average", "DVAAttributeEdit": "DVA Attribute Edit"},
    "decode": {"DVADDIMDecode": "DVA DDIM Decode"},
    "paste": {"DVAPasteBack": "DVA Paste Back"},
    "clip_edit": {"DVACLIPLoader": "DVA CLIP Loader", "DVACLIPEdit": "DVA CLIP Edit",
                  "DVAApplyIdentityDelta": "DVA Apply Identity Delta", "DVASaveIdentityDelta": "DVA Save Identity Delta",
                  "DVALoadIdentityDelta": "DVA Load Identity Delta"},
}

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}

for _module_name, _nodes in NODES.items():
    try:
        _module = importlib.import_module(f".{_module_name}", __name__)
    except Exception as error:  # a broken module costs its own nodes only
        log.error("ComfyUI-DVA: nodes %s are disabled: %s", ", ".join(_nodes), error)
        continue
    for _node_id, _display in _nodes.items():
        _node = getattr(_module, _node_id)
        NODE_CLASS_MAPPINGS[_node_id] = _node
        NODE_DISPLAY_NAME_MAPPINGS[_node_id] = _display
        _missing = missing_packages(getattr(_node, "REQUIRES", ()))
        if _missing:
            log.warning("ComfyUI-DVA: %s needs %s (pip install %s); it fails until then.",
                        _display, ", ".join(_missing), " ".join(_missing))
