"""The layers import one way: schemas ← phi3v_data ← converters, and phi3v_data ← phi3v_train ← benchmarks.

Library modules never import a CLI module (the CLI parses arguments and calls the library, not the other way), and
nothing but benchmarks imports benchmarks. Walks every module's imports with ``ast``, the lazy ones inside
functions included.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {  # package -> top-level packages it must never import
    "schemas": {"phi3v_data", "converters", "phi3v_train", "benchmarks"},
    "phi3v_data": {"converters", "phi3v_train", "benchmarks"},
    "converters": {"phi3v_train", "benchmarks"},
    "phi3v_train": {"converters", "benchmarks"},
}
CLI = ("phi3v_data.cli", "phi3v_train.cli")


def imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in ``path``, relative ones resolved against its package."""
    package = path.relative_to(root).with_suffix("").parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            found.append((node.lineno, ".".join(p for p in (base, node.module or "") if p)))
    return found


def test_no_module_imports_across_a_wall() -> None:
    problems = []
    for top, forbidden in FORBIDDEN.items():
        for path in sorted((ROOT / top).rglob("*.py")):
            in_cli = any(part == "cli" for part in path.relative_to(ROOT).parts)
            for line, module in imports(path):
                where = f"{path.relative_to(ROOT)}:{line} imports {module}"
                if module.split(".")[0] in forbidden:
                    problems.append(where)
                elif not in_cli and module.startswith(CLI):
                    problems.append(f"{where} (a library module importing a CLI module)")
    assert problems == []


def test_the_walk_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The checker itself: an import inside a function and relative ones are found and resolved."""
    probe = tmp_path / "phi3v_train" / "sub" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("import os\ndef f():\n    from converters import video\n    from ..cli import run\n"
                     "    from . import sibling\n")
    assert imports(probe, root=tmp_path) == [(1, "os"), (3, "converters"), (4, "phi3v_train.cli"),
                                             (5, "phi3v_train.sub")]
