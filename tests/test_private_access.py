"""No module reaches into another module's private names.

An AST scan over the package and its tests: an attribute access ``x._name`` (``x`` not ``self``
nor ``cls``) whose name this module does not define, and an import of a ``_private`` name from
another module, are refused outside the compatibility modules (``buffers/_compat_*.py``, one
per library), where the uses of other libraries' internals are fenced.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("algorithms", "buffers", "engine", "envs", "tests", "benchmarks")
# underscore names that are documented public API of the standard library
PUBLIC_BY_DOCS = frozenset({"_replace", "_asdict", "_fields", "_make", "_field_defaults", "_exit"})


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _defined_names(tree: ast.AST) -> set[str]:
    """Names this module defines: functions, classes, module- or class-level names and the
    attributes its classes set on ``self`` / ``cls``."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id in ("self", "cls")
        ):
            names.add(node.attr)
    return names


def private_accesses(path: Path, root: Path = ROOT) -> list[str]:
    """``file:line: what`` (``file`` relative to ``root``) for each cross-module private access
    in the module at ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    defined = _defined_names(tree)
    where = path.relative_to(root)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")[1:]
                if any(_private(p) and not p.startswith("_compat_") for p in parts):
                    found.append(f"{where}:{node.lineno}: imports {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if _private(alias.name) and not alias.name.startswith("_compat_"):
                    found.append(f"{where}:{node.lineno}: imports {alias.name} from {node.module}")
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if (
                node.attr in defined
                or node.attr in PUBLIC_BY_DOCS
                or node.attr.startswith("_compat_")
            ):
                continue
            found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    return found


def scanned_modules() -> list[Path]:
    return sorted(
        path
        for folder in SCANNED
        for path in (ROOT / folder).rglob("*.py")
        if not path.name.startswith("_compat_")
    )


def test_no_module_reaches_into_another_modules_private_names():
    found = [line for path in scanned_modules() for line in private_accesses(path)]
    assert not found, "cross-module private accesses (fence them in a _compat module):\n" + (
        "\n".join(found)
    )


def test_the_scan_finds_a_private_access_and_a_private_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "from torchrl.data.replay_buffers.storages import _rand\n"
        "import torch._dynamo\n"
        "def f(rb, self):\n"
        "    self._mine = rb._writer._cursor\n"
        "    return self._other, rb._mine\n"
    )
    assert private_accesses(module, tmp_path) == [
        "m.py:1: imports _rand from torchrl.data.replay_buffers.storages",
        "m.py:2: imports torch._dynamo",
        "m.py:4: rb._writer._cursor",
        "m.py:4: rb._writer",
    ]
