"""Doctest collection: skip an adapter module whose framework is not installed (importing it raises)."""

import importlib.util

collect_ignore = [f"{name}.py" for name in ("torch", "jax") if importlib.util.find_spec(name) is None]
if importlib.util.find_spec("jax") is None:
    collect_ignore.append("jax_xla.py")
