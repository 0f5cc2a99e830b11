"""Broyden's ring holds at most the pairs a solve stores: a huge ``memory`` (or ``threshold``) allocates what
the steps use, and gives bit for bit the iterates of a ring allocated at full size."""

import numpy as np
import pytest

import deqcore as dq
from deqcore.demos.problems import PROBLEMS
from deqcore.root import broyden


def _cubic(y):
    return y ** 3 + y - np.array([2.0, 10.0])                  # roots 1 and 2


@pytest.mark.parametrize("make", [lambda m: dq.Broyden(memory=m), lambda m: dq.LimitedMemoryBroyden(threshold=m)],
                         ids=["broyden", "limited"])
def test_a_huge_memory_solves_a_small_problem_as_memory_max_steps_does(make):
    options = dict(atol=1e-12, rtol=0.0, max_steps=50, throw=False)
    huge = dq.root_find(_cubic, np.ones(2), make(10 ** 9), **options)        # was a MemoryError (10**9 slots)
    exact = dq.root_find(_cubic, np.ones(2), make(50), **options)
    assert bool(huge.success) and huge.stats == exact.stats
    np.testing.assert_array_equal(huge.value, exact.value)
    np.testing.assert_allclose(huge.value, [1.0, 2.0], rtol=1e-12)
    U, _ = huge.learned["inverse_jacobian"]
    assert U.shape[1] <= 2 * broyden.INITIAL_SLOTS


def _batched_tanh(rng, batch=6, n=5):
    W = 0.9 * rng.standard_normal((n, n)) / np.sqrt(n)
    x = rng.standard_normal((batch, n)) * np.linspace(0.1, 3.0, batch)[:, None]    # rows finishing at different steps
    return (lambda z: np.tanh(z @ W.T + x)), np.zeros((batch, n))


CASES = [("broyden_tridiagonal", dq.Broyden(memory=30)), ("trigonometric", dq.Broyden(memory=12)),
         ("helical_valley", dq.Broyden(memory=40)), ("discrete_boundary_value", dq.LimitedMemoryBroyden(threshold=9)),
         ("chandrasekhar_h", dq.LimitedMemoryBroyden(threshold=40)), ("tanh", dq.Broyden(memory=20)),
         ("tanh", dq.LimitedMemoryBroyden(threshold=11))]


@pytest.mark.parametrize("kernels", ["", "reference"])
@pytest.mark.parametrize("name, solver", CASES, ids=[f"{n}-{type(s).__name__}" for n, s in CASES])
def test_a_growing_ring_gives_the_iterates_of_a_full_size_one(name, solver, kernels, monkeypatch):
    """memory <= max_steps; the ring starts at 2 slots and grows (2, 4, 8, ...) against one allocated whole."""
    if kernels:
        monkeypatch.setenv("DEQCORE_KERNELS", kernels)
    if name == "tanh":
        fn, y0 = _batched_tanh(np.random.default_rng(3))
        solve = lambda: dq.fixed_point(fn, y0, solver, atol=1e-13, rtol=0.0, max_steps=60, batched=True, throw=False)
    else:
        fn, y0 = PROBLEMS[name]()
        solve = lambda: dq.root_find(fn, y0, solver, atol=1e-13, rtol=0.0, max_steps=60, throw=False)
    runs = []
    for slots in (10 ** 9, 2):                      # the whole ring at the start; then a ring that grows
        monkeypatch.setattr(broyden, "INITIAL_SLOTS", slots)
        runs.append(solve())
    whole, grown = runs
    np.testing.assert_array_equal(grown.value, whole.value)
    np.testing.assert_array_equal(grown.result, whole.result)
    assert grown.stats["nfev"] == whole.stats["nfev"] and grown.stats["num_steps"] == whole.stats["num_steps"]
    if name != "tanh":                              # (one row: no compaction in either run, the same final ring)
        for a, b in zip(grown.learned["inverse_jacobian"], whole.learned["inverse_jacobian"]):
            np.testing.assert_array_equal(a, b[:, :a.shape[1]])
            assert not b[:, a.shape[1]:].any()
