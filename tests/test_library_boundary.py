"""dva_model is a plain library: no ComfyUI import, no print, importable without ComfyUI."""

import ast
import subprocess
import sys
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / "dva_model"
FORBIDDEN_MODULES = {"comfy", "folder_paths", "server", "nodes", "comfy_api", "comfy_extras", "execution"}


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
