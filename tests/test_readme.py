"""The README's layout table is the architecture: it names every module, and no module imports
from a layer below its own (lazy imports inside functions included)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _layers() -> dict[str, int]:
    """module name (``io``, ``models``, ``resources``, ``napari_plugin``) -> layer index, from the table."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Layout"):]
    layer, out = -1, {}
    for line in table.splitlines():
        if re.match(r"^\| \*\*[^*]+\*\* \| \|$", line):
            layer += 1
        m = re.match(r"^\| `(medseg/[\w/]+?|napari_plugin)(\.py|/)?` \|", line)
        if m:
            out[m.group(1).removeprefix("medseg/")] = layer
    return out


def _modules() -> list[Path]:
    files = sorted((ROOT / "medseg").glob("*.py")) + sorted((ROOT / "napari_plugin").glob("*.py"))
    return [p for p in files if p.name != "__init__.py"]


def _key(path: Path) -> str:
    return "napari_plugin" if path.parent.name == "napari_plugin" else path.stem


def _medseg_imports(path: Path) -> set[str]:
    """First-level medseg modules ``path`` imports (absolute or relative, anywhere in the file)."""
    found = set()
    tree = ast.parse(path.read_text())
    typing_only = {
        id(n) for block in ast.walk(tree)
        if isinstance(block, ast.If) and getattr(block.test, "id", None) == "TYPE_CHECKING"
        for n in ast.walk(block)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            if path.parent.name == "medseg" and node.level == 1:
                names = [node.module] if node.module else [a.name for a in node.names]
            elif node.level == 0 and node.module and node.module.split(".")[0] == "medseg":
                names = [".".join(node.module.split(".")[1:2])] or []
            else:
                continue
            found.update(n.split(".")[0] for n in names if n)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("medseg."))
    return found - {"", "__version__"}


def test_the_layout_names_every_module():
    layers = _layers()
    assert len(set(layers.values())) >= 5, layers
    missing = [str(p.relative_to(ROOT)) for p in _modules() if _key(p) not in layers]
    missing += [d for d in ("models", "resources") if d not in layers]
    assert not missing, f"README layout table lacks {missing}"
    stale = [m for m in layers if m != "napari_plugin" and not (ROOT / "medseg" / f"{m}.py").exists()
             and not (ROOT / "medseg" / m).is_dir()]
    assert not stale, f"README layout table names modules that do not exist: {stale}"


def test_no_module_imports_from_a_lower_layer():
    layers = _layers()
    upward = []
    for path in _modules():
        own = layers[_key(path)]
        for dep in sorted(_medseg_imports(path)):
            if dep in layers and layers[dep] > own:
                upward.append(f"{path.relative_to(ROOT)} (layer {own}) imports {dep} (layer {layers[dep]})")
    assert not upward, "\n".join(upward)


def test_the_layer_check_sees_imports():
    """The two checks above would pass vacuously if the parsing found nothing."""
    deps = _medseg_imports(ROOT / "medseg" / "inference.py")
    assert {"bundle", "io", "geometry"} <= deps, deps
    assert "io" in _medseg_imports(ROOT / "napari_plugin" / "_reader.py")


def test_no_import_cycles():
    """No module imports, even lazily, a module that imports it back (directly or through others)."""
    graph = {p.stem: _medseg_imports(p) & {q.stem for q in _modules()} for p in _modules() if p.parent.name == "medseg"}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for dep in sorted(graph.get(node, ())):
            if dep in path:
                cycles.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in done:
                visit(dep, path + [dep])
        done.add(node)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert not cycles, cycles
