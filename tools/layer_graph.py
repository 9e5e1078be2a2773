"""Which layer of the project imports which, read from the code (no module is imported or run).

    python tools/layer_graph.py                     # the layer graph as text: one "A -> B, C" line per layer
    python tools/layer_graph.py --dot docs/images/layers.dot [--png docs/images/layers.png]

A layer is a package of ``dva_model`` (nets, diffusion, face, formats, edit, train, cli), one of its
top-level modules (model, encoding, pipeline, metrics, testing; constants, errors and progress together
as "base"), or ``nodes``. ``--png`` draws it with Graphviz (``tred`` then ``dot``): an arrow implied by two others is left out. ``import_graph`` is also
what tests/test_library_boundary.py checks the layering rules on.
"""

import argparse
import ast
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterator, Set

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dva_model", "nodes")
BASE = ("constants", "errors", "progress")  # shared by every layer, drawn as one box


def module_name(path: Path, root: Path = ROOT) -> str:
    """dva_model/face/paste.py -> "dva_model.face.paste" (a package's __init__ is the package)."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(tree: ast.AST, module: str, is_package: bool, known: Set[str]) -> Iterator[str]:
    """Dotted names a module imports: ``import a.b`` -> a.b; ``from a import b`` -> a, and a.b when
    that is a module of the project; relative imports resolved against ``module``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            yield base
            for alias in node.names:
                if f"{base}.{alias.name}" in known:
                    yield f"{base}.{alias.name}"


def import_graph(root: Path = ROOT) -> Dict[str, Set[str]]:
    """Every module of ``dva_model`` and ``nodes`` -> the dotted names it imports (anywhere in the file)."""
    paths = [p for package in PACKAGES for p in sorted((root / package).rglob("*.py"))]
    known = {module_name(p, root) for p in paths}
    graph = {}
    for path in paths:
        module = module_name(path, root)
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[module] = set(_imported(tree, module, path.name == "__init__.py", known)) - {""}
    return graph


def layer(module: str) -> str:
    """The layer a project module belongs to (see the module docstring); "" for anything else."""
    parts = module.split(".")
    if parts[0] == "nodes":
        return "nodes"
    if parts[0] != "dva_model" or len(parts) == 1:
        return ""
    name = parts[1]
    if name in BASE:
        return "base"
    return "" if name in ("__main__", "__init__") else name


def layer_graph(graph: Dict[str, Set[str]]) -> Dict[str, Set[str]]:
    """Layer -> the other layers its modules import."""
    edges: Dict[str, Set[str]] = defaultdict(set)
    for module, imports in graph.items():
        source = layer(module)
        if not source:
            continue
        edges[source].update(target for target in map(layer, imports) if target and target != source)
    return dict(edges)


def to_dot(edges: Dict[str, Set[str]]) -> str:
    """Graphviz text of the layer graph: arrows point from the importer to the imported, bottom layers last."""
    lines = ["digraph layers {", '  rankdir="TB";', '  node [shape=box, fontname="Helvetica"];',
             '  base [style=dashed, label="base\\n(constants, errors, progress)"];']
    for source in sorted(edges):
        for target in sorted(edges[source]):
            if target != "base":  # everything may import base; its arrows would only clutter the picture
                lines.append(f'  "{source}" -> "{target}";')
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dot", type=Path, help="write the Graphviz .dot file here")
    parser.add_argument("--png", type=Path, help="also render it as PNG with Graphviz's dot (needs --dot)")
    args = parser.parse_args(argv)
    edges = layer_graph(import_graph())
    if args.dot is None:
        for source in sorted(edges):
            sys.stdout.write(f"{source} -> {', '.join(sorted(edges[source])) or '-'}\n")
        return 0
    args.dot.parent.mkdir(parents=True, exist_ok=True)
    args.dot.write_text(to_dot(edges))
    if args.png is not None:
        if shutil.which("dot") is None or shutil.which("tred") is None:
            sys.stderr.write("Graphviz is not installed (apt-get install graphviz); wrote only the .dot file.\n")
            return 1
        # Drawn without the arrows implied by others (Graphviz's transitive reduction), so it stays readable.
        reduced = subprocess.run(["tred", str(args.dot)], check=True, capture_output=True, text=True).stdout
        subprocess.run(["dot", "-Tpng", "-o", str(args.png)], input=reduced, check=True, text=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
