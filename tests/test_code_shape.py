"""The size rules as a test: no module over 400 lines, no function over 60.

A long function hides several ideas and a long module several rooms; both are cheaper to split
when they first grow than after. Generated protobuf code and the lab's benchmark datasets
(`attribnet/lab/datasets/`, tables of generator settings) are exempt.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("shared_backbone", "coordinator", "node", "attribnet", "tests")
EXEMPT = ("attribnet/lab/datasets/",)
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def checked_modules() -> list[Path]:
    paths = [p for folder in FOLDERS for p in sorted((REPO / folder).rglob("*.py"))]
    return [p for p in paths if not p.name.endswith(("_pb2.py", "_pb2_grpc.py"))
            and not p.relative_to(REPO).as_posix().startswith(EXEMPT)]


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """(name, lines) of every function or method in `source` longer than `limit` lines, decorators included."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            lines = node.end_lineno - first + 1
            if lines > limit:
                found.append((node.name, lines))
    return found


def test_the_checker_finds_a_long_function_and_passes_a_short_one():
    body = "\n".join(f"    x{i} = {i}" for i in range(61))
    assert long_functions(f"def long():\n{body}\n") == [("long", 62)]
    assert long_functions("def short():\n    return 1\n") == []
    assert long_functions(f"class A:\n    async def method(self):\n    {body.replace(chr(10), chr(10) + '    ')}\n") == [("method", 62)]


def test_no_module_is_over_400_lines():
    over = {p.relative_to(REPO).as_posix(): n for p in checked_modules()
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not over, f"modules over {MAX_MODULE_LINES} lines: {over}"


def test_no_function_is_over_60_lines():
    over = {f"{p.relative_to(REPO).as_posix()}:{name}": n for p in checked_modules()
            for name, n in long_functions(p.read_text())}
    assert not over, f"functions over {MAX_FUNCTION_LINES} lines: {over}"
