"""README promises of the root finders, fixed points, linear solves, DEQ models and the layer API, checked on
cases the other test files leave out: right-hand sides far from size 1 in GMRES (a SUCCESS must meet the test),
empty batches in LU. References: dense NumPy solves, SciPy, finite differences.
"""

from __future__ import annotations

import numpy as np
import pytest

import deqcore as dq

# ------------------------------------------------------------------------------------------ linear solves


@pytest.mark.parametrize("dtype, scale", [(np.float32, 1e20), (np.float32, 1e-23), (np.float64, 1e160),
                                          (np.float64, 1e-170)])
def test_gmres_success_on_a_right_hand_side_far_from_size_one_is_the_solution(dtype, scale):
    # ||b||² overflows (or underflows) in the dtype: the test ||r|| <= rtol·||b|| must not pass at x = 0
    rng = np.random.default_rng(0)
    A = rng.standard_normal((3, 4, 4)) + 4 * np.eye(4)
    b = rng.standard_normal((3, 4))
    exact = np.linalg.solve(A, b[..., None])[..., 0]
    sol = dq.linear_solve(A.astype(dtype), (scale * b).astype(dtype), dq.GMRES(rtol=1e-5), throw=False)
    assert sol.success.all() and sol.value.dtype == dtype
    np.testing.assert_allclose(sol.value.astype(np.float64) / scale, exact, rtol=1e-4, atol=1e-4)
    bnorm = np.linalg.norm(b, axis=1)
    assert np.all(np.isfinite(sol.residual)) and np.all(sol.residual / scale <= 1e-5 * bnorm * 1.01)


@pytest.mark.parametrize("solver", [dq.LU(), dq.GMRES()], ids=["lu", "gmres"])
def test_an_empty_batch_of_matrices_gives_an_empty_solution(solver):
    sol = dq.linear_solve(np.zeros((0, 3, 3)), np.zeros((0, 3)), solver)
    assert sol.value.shape == (0, 3) and len(sol.result) == 0
