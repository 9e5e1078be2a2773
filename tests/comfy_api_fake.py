"""A small stand-in for the part of ComfyUI's V3 node API (``comfy_api.v0_0_2``) the pack uses.

The real ``comfy_api`` imports ComfyUI's ``comfy`` package (and its requirements), so the node unit tests
run against this stand-in instead; the real-server tests (tests/test_comfy_server.py) load the pack into
a real ComfyUI and compare its /object_info with ``v1_info`` below. Only what the nodes call is here:
``io`` (Schema, ComfyNode, NodeOutput, input/output types, Custom, UploadType), ``ui``, ``ComfyExtension``,
``InputImpl`` (VideoFromFile, VideoFromComponents) and ``Types`` (VideoComponents). Signatures follow
comfy_api.latest of ComfyUI 0.3.64 (keyword arguments only are used by the pack).
"""

import sys
import types
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional


def _pruned(values: dict) -> dict:
    return {key: value for key, value in values.items() if value is not None}


class _Input:
    """One node input: an id, its io type and the options /object_info shows for it."""

    io_type = "*"

    def __init__(self, id: str, *, optional: bool = False, tooltip: Optional[str] = None, **options: Any):
        self.id, self.optional, self.tooltip = id, optional, tooltip
        upload = options.pop("upload", None)
        self.options = _pruned({"tooltip": tooltip, **options})
        if upload is not None:
            self.options[upload.value] = True

    def as_v1(self) -> list:
        return [self.io_type, dict(self.options)]


class _Output:
    io_type = "*"

    def __init__(self, id: Optional[str] = None, *, display_name: Optional[str] = None,
                 tooltip: Optional[str] = None, is_output_list: bool = False):
        self.id, self.display_name, self.tooltip = id, display_name, tooltip
        self.is_output_list = is_output_list


def _comfy_type(io_type: str) -> type:
    """A type with nested Input / Output classes, as comfy_api's @comfytype makes them."""
    inputs = type("Input", (_Input,), {"io_type": io_type})
    outputs = type("Output", (_Output,), {"io_type": io_type})
    return type(io_type, (), {"io_type": io_type, "Input": inputs, "Output": outputs})


class UploadType(str, Enum):
    image = "image_upload"
    audio = "audio_upload"
    video = "video_upload"


@dataclass
class Schema:
    node_id: str
    display_name: Optional[str] = None
    category: str = "sd"
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    hidden: list = field(default_factory=list)
    description: str = ""
    is_output_node: bool = False
    is_input_list: bool = False
    not_idempotent: bool = False


class NodeOutput:
    """What ``execute`` returns: output values (indexable, so ``(a, b) = node.execute(...)`` works) and ui."""

    def __init__(self, *args: Any, ui: Any = None, expand: Any = None, block_execution: Any = None):
        self.args, self.ui = args, ui

    @property
    def result(self):
        return self.args if self.args else None

    def __getitem__(self, index):
        return self.args[index]


class ComfyNode:
    """Base of a V3 node: classmethods only, the schema from ``define_schema``."""

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs) -> NodeOutput:
        raise NotImplementedError

    @classmethod
    def GET_SCHEMA(cls) -> Schema:
        return cls.define_schema()


class ComfyExtension:
    async def on_load(self) -> None:
        return None

    async def get_node_list(self) -> list:
        raise NotImplementedError


def Custom(io_type: str) -> type:
    return _comfy_type(io_type)


def _io_module() -> types.ModuleType:
    io = types.ModuleType("comfy_api.v0_0_2.io")
    for name, io_type in (("Int", "INT"), ("Float", "FLOAT"), ("String", "STRING"), ("Boolean", "BOOLEAN"),
                          ("Combo", "COMBO"), ("Image", "IMAGE"), ("Mask", "MASK"), ("Audio", "AUDIO"),
                          ("Video", "VIDEO")):
        setattr(io, name, _comfy_type(io_type))
    for name, value in (("Schema", Schema), ("NodeOutput", NodeOutput), ("ComfyNode", ComfyNode),
                        ("Custom", Custom), ("UploadType", UploadType), ("ComfyExtension", ComfyExtension)):
        setattr(io, name, value)
    return io


@dataclass
class VideoComponents:
    images: Any
    frame_rate: Any
    audio: Any = None
    metadata: Any = None


class VideoFromFile:
    def __init__(self, file):
        self._file = file

    def get_stream_source(self):
        return self._file


class VideoFromComponents:
    def __init__(self, components: VideoComponents):
        self._components = components

    def get_components(self) -> VideoComponents:
        return self._components

    def get_stream_source(self):
        raise NotImplementedError("the stand-in cannot encode a video; use VideoFromFile in tests")


def v1_info(node: type) -> dict:
    """A V3 node described as ComfyUI's /object_info describes it (comfy_api's Schema.get_v1_info)."""
    schema = node.define_schema()
    declared = {"required": {}}
    for item in schema.inputs:
        declared.setdefault("optional" if item.optional else "required", {})[item.id] = item.as_v1()
    return {
        "input": declared,
        "input_order": {section: list(inputs) for section, inputs in declared.items()},
        "output": [o.io_type for o in schema.outputs],
        "output_name": [o.display_name or o.io_type for o in schema.outputs],
        "output_is_list": [o.is_output_list for o in schema.outputs],
        "output_node": schema.is_output_node,
        "category": schema.category,
        "display_name": schema.display_name,
    }


def install() -> None:
    """Make ``import comfy_api.v0_0_2`` give this stand-in (for the whole test session)."""
    if "comfy_api" in sys.modules:
        return
    root = types.ModuleType("comfy_api")
    root.__path__ = []
    pinned = types.ModuleType("comfy_api.v0_0_2")
    pinned.__path__ = []
    pinned.io = _io_module()
    pinned.ui = types.ModuleType("comfy_api.v0_0_2.ui")
    pinned.ComfyExtension = ComfyExtension
    pinned.InputImpl = types.SimpleNamespace(VideoFromFile=VideoFromFile, VideoFromComponents=VideoFromComponents)
    pinned.Types = types.SimpleNamespace(VideoComponents=VideoComponents)
    root.v0_0_2 = pinned
    sys.modules.update({"comfy_api": root, "comfy_api.v0_0_2": pinned, "comfy_api.v0_0_2.io": pinned.io,
                        "comfy_api.v0_0_2.ui": pinned.ui})
