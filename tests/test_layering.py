"""The architecture as a test: every import in the project points the way the layout says.

`shared_backbone` imports neither role nor the lab (`attribnet.lab`: benchmark datasets and
baselines); inside it `model/` imports no other room, `data/` builds on `model/`, `protocol/` (wire
definitions, free of Keras) on `model/` only, `runtime/` (gRPC and TensorFlow runtime) on `model/` and
`protocol/`, `training/` on `model/`, `data/` and `runtime/`; `coordinator` and `node` never import
each other (a node is another organisation's process); only `attribnet` wires both roles.
Imports inside functions count too: the AST of every module is walked, not just its header.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("shared_backbone", "coordinator", "node", "attribnet")

# module prefix -> prefixes it must never import (checked longest prefix first)
SB = "shared_backbone"
FORBIDDEN = {
    f"{SB}.config": (f"{SB}.model", f"{SB}.data", f"{SB}.training", f"{SB}.protocol", f"{SB}.runtime",
                     "coordinator", "node", "attribnet"),
    f"{SB}.model": (f"{SB}.data", f"{SB}.training", f"{SB}.protocol", f"{SB}.runtime", "coordinator", "node", "attribnet"),
    f"{SB}.protocol": (f"{SB}.data", f"{SB}.training", f"{SB}.runtime", "coordinator", "node", "attribnet",
                       "keras", "tensorflow"),
    f"{SB}.runtime": (f"{SB}.data", f"{SB}.training", "coordinator", "node", "attribnet"),
    f"{SB}.data": (f"{SB}.training", f"{SB}.protocol", f"{SB}.runtime", "coordinator", "node", "attribnet"),
    f"{SB}.training": (f"{SB}.protocol", "coordinator", "node", "attribnet"),
    SB: ("coordinator", "node", "attribnet"),
    "coordinator": ("node", "attribnet"),
    "node": ("coordinator", "attribnet"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str) -> set[str]:
    """Every absolute module name `source` imports, anywhere in the file (relative imports resolved)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: -node.level] if node.level else []
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(module: str, imports: set[str]) -> list[str]:
    rule = max((p for p in FORBIDDEN if _within(module, p)), key=len, default=None)
    if rule is None:
        return []
    return sorted(f"{module} imports {name}" for name in imports for banned in FORBIDDEN[rule] if _within(name, banned))


def project_modules() -> list[tuple[str, Path]]:
    files = [p for package in PACKAGES for p in (REPO / package).rglob("*.py")]
    return sorted((module_name(p), p) for p in files if "_pb2" not in p.name)


def test_the_checker_catches_a_crossed_layer():
    """A test that cannot fail proves nothing: each kind of crossing is caught, inside functions too."""
    assert violations("shared_backbone.model.heads", imported_modules("from shared_backbone.data import datasets", "x"))
    assert violations("node.server", imported_modules("def f():\n    import coordinator.registry\n", "x"))
    assert violations("coordinator.gateway.server", imported_modules("from node.state import HEAD_DIR", "x"))
    assert violations("shared_backbone.protocol.wire", imported_modules("from ..training import fit", "shared_backbone.protocol.wire"))
    assert violations("shared_backbone.protocol.wire", imported_modules("import keras", "x"))
    assert violations("node.train_head", imported_modules("from attribnet.lab.datasets import zoo", "x"))
    assert violations("shared_backbone.data.datasets", imported_modules("from attribnet.lab.datasets.zoo import make_generator", "x"))
    assert not violations("attribnet.lab.datasets.zoo", imported_modules("from shared_backbone.model import preprocessing", "x"))
    assert not violations("attribnet.cli", imported_modules("import coordinator, node", "x"))


def test_every_import_follows_the_layering():
    modules = project_modules()
    assert len(modules) > 50
    problems = [v for name, path in modules for v in violations(name, imported_modules(path.read_text(), name))]
    assert not problems, "\n".join(problems)


def test_no_production_module_imports_the_lab():
    """Production code (`node`, `coordinator`, `shared_backbone`) never reaches the benchmark lab:
    a node's self-made negatives rendered by the benchmark's own generators would grade their own
    homework. The checker catches exactly the crossing this rule was written against."""
    assert violations("shared_backbone.data.negatives", imported_modules("from attribnet.lab.datasets.zoo import make_generator", "x"))
    assert violations("shared_backbone.data.negative_space", imported_modules("def f():\n    from attribnet.lab.datasets import upscalers\n", "x"))
    production = [(name, path) for name, path in project_modules() if not _within(name, "attribnet")]
    assert any(name == "shared_backbone.data.negatives" for name, _ in production)
    crossings = [f"{name} imports {imported}" for name, path in production
                 for imported in imported_modules(path.read_text(), name) if _within(imported, "attribnet.lab")]
    assert not crossings, "\n".join(crossings)


@pytest.mark.parametrize("module", ["shared_backbone.protocol.wire", "shared_backbone.protocol.identity",
                                    "attribnet.lab.datasets.zoo", "shared_backbone.config", "shared_backbone.data.negatives"])
def test_light_modules_do_not_load_tensorflow(module):
    """The wire definitions, the zoo, the config loader and the negatives are numpy-level: importing them loads no Keras."""
    code = f"import sys, {module}; print(any(m in sys.modules for m in ('keras', 'tensorflow')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120, check=True)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
