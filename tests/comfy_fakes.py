"""A small stand-in for the ComfyUI host, for running the nodes without a ComfyUI checkout.

Fake ``folder_paths``, ``comfy.utils``, ``comfy.model_management`` and ``comfy.model_patcher`` modules
record progress bars and model loads and can raise the user's Cancel. The ``comfy_host`` fixture
(tests/conftest.py) installs them; the real server is exercised by tests/test_comfy_server.py.
"""

import os
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import torch

class InterruptProcessingException(Exception):
    """Stand-in for comfy.model_management.InterruptProcessingException."""


@dataclass
class FakeHost:
    """What the fake ComfyUI recorded, and the folders it uses."""

    root: Path
    bars: list = field(default_factory=list)  # (total, [values...]) per ProgressBar
    loads: list = field(default_factory=list)  # keyword arguments of each load_models_gpu call
    interrupt_after: int = -1  # raise Cancel at the n-th interrupt check (-1: never)
    checks: int = 0

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def input(self) -> Path:
        return self.root / "input"

    @property
    def output(self) -> Path:
        return self.root / "output"


def _folder_paths(host: FakeHost) -> types.ModuleType:
    module = types.ModuleType("folder_paths")
    module.models_dir = str(host.models)
    module.folder_names_and_paths = {}

    def folder(name):
        if name not in module.folder_names_and_paths:
            raise KeyError(name)
        return module.folder_names_and_paths[name]

    def get_filename_list(name):
        paths, extensions = folder(name)
        found = []
        for base in paths:
            for dirpath, _, files in os.walk(base):
                for file in files:
                    if not extensions or os.path.splitext(file)[1].lower() in extensions:
                        found.append(os.path.relpath(os.path.join(dirpath, file), base).replace(os.sep, "/"))
        return sorted(found)

    def get_full_path(name, filename):
        for base in folder(name)[0]:
            candidate = os.path.join(base, filename)
            if os.path.isfile(candidate):
                return candidate
        return None

    def get_annotated_filepath(name):
        for tag, base in ((" [output]", host.output), (" [input]", host.input)):
            if name.endswith(tag):
                return os.path.join(base, name[: -len(tag)])
        return os.path.join(host.input, name)

    def get_save_image_path(prefix, output_dir, width=0, height=0):
        subfolder, name = os.path.split(prefix)
        target = os.path.join(output_dir, subfolder)
        os.makedirs(target, exist_ok=True)
        counter = 1 + sum(1 for f in os.listdir(target) if f.startswith(name + "_"))
        return target, name, counter, subfolder, prefix

    module.get_filename_list = get_filename_list
    module.get_full_path = get_full_path
    module.get_folder_paths = lambda name: list(folder(name)[0])
    module.get_input_directory = lambda: str(host.input)
    module.get_output_directory = lambda: str(host.output)
    module.get_temp_directory = lambda: str(host.root / "temp")
    module.get_annotated_filepath = get_annotated_filepath
    module.get_save_image_path = get_save_image_path
    return module


def _comfy_modules(host: FakeHost) -> dict:
    comfy = types.ModuleType("comfy")
    comfy.__path__ = []
    utils = types.ModuleType("comfy.utils")

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total, self.values = total, []
            host.bars.append((total, self.values))

        def update_absolute(self, value, total=None, preview=None):
            self.values.append(value)

    utils.ProgressBar = ProgressBar
    mm = types.ModuleType("comfy.model_management")
    mm.InterruptProcessingException = InterruptProcessingException

    def throw_exception_if_processing_interrupted():
        host.checks += 1
        if host.interrupt_after >= 0 and host.checks > host.interrupt_after:
            raise InterruptProcessingException()

    def load_models_gpu(models, memory_required=0, force_full_load=False, **_):
        host.loads.append({"models": list(models), "memory_required": memory_required,
                           "force_full_load": force_full_load})

    mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    mm.load_models_gpu = load_models_gpu
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.intermediate_device = lambda: torch.device("cpu")
    mm.unet_offload_device = lambda: torch.device("cpu")
    mm.should_use_bf16 = lambda device=None, **_: False
    mm.should_use_fp16 = lambda device=None, **_: False
    mm.get_free_memory = lambda device=None, **_: 8 << 30
    patcher = types.ModuleType("comfy.model_patcher")

    class ModelPatcher:
        def __init__(self, model, load_device, offload_device):
            self.model, self.load_device, self.offload_device = model, load_device, offload_device

    patcher.ModelPatcher = ModelPatcher
    comfy.utils, comfy.model_management, comfy.model_patcher = utils, mm, patcher
    return {"comfy": comfy, "comfy.utils": utils, "comfy.model_management": mm, "comfy.model_patcher": patcher}


def pack_nodes():
    import nodes

    return nodes.NODES_BY_ID


def combo_options(node, name: str) -> list:
    """The choices a node's combo input ``name`` offers now (what /object_info would list)."""
    (item,) = [item for item in node.define_schema().inputs if item.id == name]
    return item.options["options"]


def install(path: Path, folder: Path, name: str) -> str:
    """Link ``path`` into ``folder`` as ``name`` (what a user does by copying the file there)."""
    target = folder / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(path)
    return name


def install_fake_host(root: Path, monkeypatch) -> "FakeHost":
    """Put the fake ComfyUI modules in ``sys.modules`` (undone by ``monkeypatch``), folders under ``root``."""
    host = FakeHost(root=root)
    for folder in (host.models / "dva", host.input, host.output):
        folder.mkdir(parents=True)
    monkeypatch.setitem(sys.modules, "folder_paths", _folder_paths(host))
    for name, module in _comfy_modules(host).items():
        monkeypatch.setitem(sys.modules, name, module)
    return host


def model_handle(model, model_id: str = "small.safetensors:1"):
    """A loaded-model handle as DVA Model Loader returns it, for a model built in the test (needs comfy_host)."""
    from nodes._host import ModelHandle

    patcher = sys.modules["comfy.model_patcher"].ModelPatcher(model, torch.device("cpu"), torch.device("cpu"))
    return ModelHandle(model=model, patcher=patcher, model_id=model_id, device=torch.device("cpu"), dtype=torch.float32)


class Outputs:
    """A node's outputs as ComfyUI's executor holds them (one list per output), read back the way a test
    wants them: ``outputs[k]`` is the value itself when the node ran once and output k is not a list
    output, else the list. ``ui``: the run's UI dict (several runs: each key's lists joined)."""

    def __init__(self, lists: list, runs: list, list_outputs: list) -> None:
        self.lists, self.runs, self._list_outputs = lists, runs, list_outputs

    def __len__(self) -> int:
        return len(self.lists)

    def __getitem__(self, k: int):
        values = self.lists[k]
        return values[0] if len(self.runs) == 1 and not self._list_outputs[k] else values

    @property
    def ui(self):
        uis = [run.ui for run in self.runs if getattr(run, "ui", None)]
        return uis[0] if len(uis) == 1 else {key: [v for ui in uis for v in ui.get(key, [])] for key in uis[0]}


def run_listed(node, inputs: dict) -> Outputs:
    """Run ``node`` on list-valued ``inputs`` as ComfyUI 0.3.x's executor does (``_async_map_node_over_list``
    and ``merge_result_data`` in its execution.py): a node whose schema sets ``is_input_list`` gets the lists
    in one call; any other runs once per position, a shorter list repeating its last item; outputs flagged
    ``is_output_list`` are concatenated over the runs, the others collected one value per run."""
    schema = node.define_schema() if hasattr(node, "define_schema") else None
    if schema is not None and schema.is_input_list:
        runs = [node.execute(**inputs)]
    else:
        count = max((len(values) for values in inputs.values()), default=1)
        runs = [node.execute(**{name: values[min(i, len(values) - 1)] for name, values in inputs.items()})
                for i in range(count)]
    width = len(runs[0].args)
    flags = [o.is_output_list for o in schema.outputs] if schema is not None else [False] * width
    lists = [[item for run in runs for item in run[k]] if flags[k] else [run[k] for run in runs] for k in range(width)]
    return Outputs(lists, runs, flags)
