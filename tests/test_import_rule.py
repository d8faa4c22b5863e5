"""The import rule of ARCHITECTURE.md, read from the source: jobs import only the layers below them, so no circle.

Every ``import satseg.…``/``from satseg… import`` in every module (those inside functions too, which Python
would only run later) is mapped to the room it names (``satseg/inference/segmenter.py`` → ``inference``) and
must go to a room of a lower layer. The package's doors (``satseg/__init__.py``'s lazy re-exports,
``__main__.py``) are not rooms.
"""

import ast
from pathlib import Path

import satseg

PACKAGE = Path(satseg.__file__).parent

LAYERS: list[set[str]] = [
    {"errors", "satseg", "lazy", "progress"},  # shared infrastructure: the errors, `__version__`, …
    {"atomic", "paths", "device"},  # … the one atomic writer, output checks, device and precision …
    {"plots"},  # … and the Pillow plots
    {"data", "nn"},
    {"runs", "zoo"},
    {"export"},
    {"inference"},
    {"evaluation"},
    {"training"},
    {"demo", "tables"},
    {"cli"},
]
"""Rooms from the bottom up; the same list as ARCHITECTURE.md's "Import rule"."""
DOORS = {"__init__.py", "__main__.py"}  # the top-level ones only


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "satseg"


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, satseg module)`` for every import of satseg in ``path``; ``from satseg import x`` names ``x``'s
    room when ``x`` is a subpackage or module (``from satseg import nn``), else the root."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "satseg"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "satseg":
            if node.module == "satseg":
                for alias in node.names:
                    is_room = (PACKAGE / alias.name).is_dir() or (PACKAGE / f"{alias.name}.py").is_file()
                    found.append((node.lineno, f"satseg.{alias.name}" if is_room else "satseg"))
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.append((node.lineno, "relative"))
    return found


def _layer(room: str) -> int | None:
    return next((i for i, rooms in enumerate(LAYERS) if room in rooms), None)


def _module_files() -> list[tuple[str, Path]]:
    files = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if len(relative.parts) == 1 and relative.name in DOORS:
            continue
        files.append((relative.parts[0].removesuffix(".py"), path))
    return files


def test_every_room_has_a_layer():
    rooms = {room for room, _ in _module_files()}
    assert not [room for room in rooms if _layer(room) is None], "add new rooms to LAYERS and ARCHITECTURE.md"


def test_imports_flow_down_the_layers_only():
    broken = []
    for room, path in _module_files():
        for line, module in _imports(path):
            if module == "relative":
                broken.append(f"{path.relative_to(PACKAGE.parent)}:{line}: a relative import (write satseg.…)")
                continue
            target = _room(module)
            if target == room:
                continue
            mine, theirs = _layer(room), _layer(target)
            if theirs is None or mine is None or theirs >= mine:
                broken.append(f"{path.relative_to(PACKAGE.parent)}:{line}: `{room}` imports `{module}`")
    assert not broken, "imports against the rule of ARCHITECTURE.md:\n" + "\n".join(broken)


def test_the_rule_catches_a_circle(tmp_path):
    """The check itself: the circle this rule was written to end (inference → evaluation) would be caught."""
    sample = tmp_path / "postprocess.py"
    sample.write_text("def f():\n    from satseg.evaluation.metrics import dice\n", encoding="utf-8")
    (line, module), = _imports(sample)
    assert (line, module) == (2, "satseg.evaluation.metrics")
    assert _layer(_room(module)) > _layer("inference")
    # `from satseg import nn` names the nn room, `from satseg import __version__` the root
    sample.write_text("from satseg import nn, __version__\n", encoding="utf-8")
    assert [_room(m) for _, m in _imports(sample)] == ["nn", "satseg"]
