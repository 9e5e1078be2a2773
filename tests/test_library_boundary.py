"""dva_model is a plain library in layers: no ComfyUI import, no print, importable without ComfyUI; its
networks and samplers touch no files or video; the nodes never lean on the CLI."""

import ast
import subprocess
import sys
from pathlib import Path

from tools.layer_graph import ROOT, import_graph, layer_graph

LIBRARY = ROOT / "dva_model"
FORBIDDEN_MODULES = {"comfy", "folder_paths", "server", "nodes", "comfy_api", "comfy_extras", "execution"}
# nets/ and diffusion/ are maths on tensors: they may import each other's own package and the base only,
# and no file, image or video code from outside the project either.
MATHS_LAYERS = {
    "dva_model.nets": ("dva_model.nets", "dva_model.constants", "dva_model.errors", "dva_model.progress"),
    "dva_model.diffusion": ("dva_model.diffusion", "dva_model.constants", "dva_model.errors", "dva_model.progress"),
}
FILE_AND_VIDEO_MODULES = {"av", "PIL", "cv2", "imageio", "safetensors", "pickle", "zipfile", "io", "pathlib",
                          "tempfile", "shutil", "dlib"}


def _within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def layering_violations(graph) -> list:
    """One line per import that breaks a layering rule (the rules: module docstring)."""
    found = []
    for module, imports in sorted(graph.items()):
        for name in sorted(imports):
            top = name.split(".")[0]
            if module.startswith("dva_model") and (top in FORBIDDEN_MODULES or top.startswith("comfy")):
                found.append(f"{module} imports {name} (the library never imports ComfyUI or the nodes)")
            if module.startswith("nodes") and _within(name, ["dva_model.cli"]):
                found.append(f"{module} imports {name} (nodes use the library, not the CLI)")
            for layer, allowed in MATHS_LAYERS.items():
                if not _within(module, [layer]):
                    continue
                if top == "dva_model" and not _within(name, allowed):
                    found.append(f"{module} imports {name} ({layer} may import only {', '.join(allowed)})")
                if top in FILE_AND_VIDEO_MODULES:
                    found.append(f"{module} imports {name} ({layer} does no file, image or video I/O)")
    return found


def test_layers_import_only_what_they_may():
    graph = import_graph()
    assert any(m.startswith("dva_model.nets.") for m in graph) and any(m.startswith("nodes.") for m in graph)
    assert layering_violations(graph) == []


def layer_cycles(edges) -> list:
    """Every layer that reaches itself through the imports (a cycle: the layers are no longer a stack)."""
    def reach(start):
        seen, todo = set(), list(edges.get(start, ()))
        while todo:
            layer = todo.pop()
            if layer not in seen:
                seen.add(layer)
                todo += edges.get(layer, ())
        return seen

    return sorted(layer for layer in edges if layer in reach(layer))


def test_the_layers_form_a_stack_without_cycles():
    assert layer_cycles(layer_graph(import_graph())) == []
    assert layer_cycles({"formats": {"edit", "base"}, "edit": {"formats"}, "base": set()}) == ["edit", "formats"]


def test_the_layer_check_catches_each_kind_of_forbidden_import():
    graph = {"dva_model.nets.unet": {"dva_model.formats.video", "av"}, "dva_model.diffusion.ddim_sample":
             {"dva_model.face.align"}, "dva_model.pipeline": {"comfy.utils"}, "nodes.encode": {"dva_model.cli.common"}}
    assert len(layering_violations(graph)) == 5


def _imports(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0]


def test_no_comfyui_imports_and_no_print():
    offenders = []
    for path in sorted(LIBRARY.rglob("*.py")):
        bad = FORBIDDEN_MODULES.intersection(_imports(path))
        if bad:
            offenders.append(f"{path.name} imports {sorted(bad)}")
        tree = ast.parse(path.read_text())
        prints = [n.lineno for n in ast.walk(tree)
                  if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"]
        if prints:
            offenders.append(f"{path.name} calls print() at lines {prints}")
    assert not offenders, offenders


def test_every_library_module_imports_in_a_clean_interpreter():
    modules = [".".join(p.relative_to(LIBRARY.parent).with_suffix("").parts) for p in sorted(LIBRARY.rglob("*.py"))
               if p.stem not in ("__main__", "__init__")]
    code = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)\n" \
           "assert not any(k.split('.')[0] in ('comfy', 'folder_paths') for k in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True,
                            cwd=LIBRARY.parent)
    assert result.returncode == 0, result.stderr[-2000:]
