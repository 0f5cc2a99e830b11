"""The DEQ maps every solver benchmark uses: z = tanh(W z + U x + b), easy (‖W‖₂ = 0.9) or hard (spectral
radius of W = 1.5), with the same random draws in every benchmark so their tables compare."""

import numpy as np


def deq_map_arrays(kind, batch, width, inputs, rng):
    """(W, U, b, x) as float64 NumPy arrays, drawn from ``rng`` in a fixed order."""
    if kind not in ("easy", "hard"):
        raise ValueError(f"kind must be 'easy' or 'hard', got {kind!r}")
    W = rng.standard_normal((width, width))
    if kind == "easy":
        W *= 0.9 / np.linalg.norm(W, 2)
    else:
        W *= 1.5 / np.max(np.abs(np.linalg.eigvals(W)))
    U = rng.standard_normal((width, inputs)) / np.sqrt(inputs)
    b = 0.1 * rng.standard_normal(width)
    x = rng.standard_normal((batch, inputs))
    return W, U, b, x
