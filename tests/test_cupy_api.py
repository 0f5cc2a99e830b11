"""Every array function deqcore calls through its namespace exists in CuPy, with the keywords we pass.

The CuPy code paths run only on a GPU; this static check runs anywhere CuPy imports (no device needed) and
catches a NumPy-only function or keyword before it reaches a GPU user."""

import ast
import inspect
import pathlib

import pytest

cupy = pytest.importorskip("cupy")

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "deqcore"


def _namespace_calls():
    """(dotted name after ``xp``, keywords, where) for every ``<...>.xp.<name>`` use in the package."""
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        calls = {id(node.func): node for node in ast.walk(tree) if isinstance(node, ast.Call)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or isinstance(getattr(node, "_parent", None), ast.Attribute):
                continue
            chain, inner = [], node
            while isinstance(inner, ast.Attribute):
                chain.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name):
                chain.append(inner.id)
            chain.reverse()
            if "xp" not in chain[:-1]:
                continue
            name = chain[chain.index("xp") + 1:]
            call = calls.get(id(node))
            keywords = [k.arg for k in call.keywords if k.arg] if call is not None else []
            yield ".".join(name), keywords, f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"


USES = sorted(set((name, tuple(kw), where) for name, kw, where in _namespace_calls()))


def test_the_scan_finds_the_namespace_calls():
    names = {name for name, _, _ in USES}
    assert {"zeros", "where", "copyto", "linalg.solve"} <= names


def test_cupy_has_every_function_and_keyword():
    problems = []
    for name, keywords, where in USES:
        obj = cupy
        for part in name.split("."):
            if not hasattr(obj, part):
                problems.append(f"{where}: cupy has no {name}")
                break
            obj = getattr(obj, part)
        else:
            try:
                params = inspect.signature(obj).parameters
            except (TypeError, ValueError):         # ufuncs and Cython functions: no introspectable signature
                continue
            if any(p.kind is p.VAR_KEYWORD for p in params.values()):
                continue
            problems += [f"{where}: cupy.{name} takes no keyword {k!r}" for k in keywords if k not in params]
    assert not problems, "\n".join(problems)
