"""Promises of the layer API (README "A DEQ layer and its training step", "What a result guarantees": bad
arguments are named, never a silent NaN) checked against hand computations and finite differences."""

import numpy as np
import pytest

import deqcore as dq
from deqcore import nn


# -- optimisers ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_clip_by_global_norm_never_returns_a_non_finite_gradient(bad):
    grads = {"a": np.array([bad, 1.0]), "b": np.array([2.0])}
    clipped, norm = nn.clip_by_global_norm(grads, 1.0)
    assert not np.isfinite(float(norm))                      # the caller can see it and skip the step
    for leaf in nn.tree_leaves(clipped):
        assert np.array_equal(leaf, np.zeros_like(leaf))     # nothing that would poison the parameters
    params = {"a": np.array([1.0, 2.0]), "b": np.array([3.0])}
    new, _ = nn.SGD(lr=0.1).update(clipped, nn.SGD(lr=0.1).init(params), params)
    assert all(np.array_equal(new[k], params[k]) for k in params)


def test_clip_by_global_norm_of_finite_gradients_is_the_hand_computed_scaling():
    grads = {"a": np.array([3.0, 0.0], np.float32), "b": {"c": np.array([[4.0]], np.float32)}}
    clipped, norm = nn.clip_by_global_norm(grads, 2.5)
    assert float(norm) == pytest.approx(5.0)
    np.testing.assert_allclose(clipped["a"], [1.5, 0.0], rtol=1e-6)
    np.testing.assert_allclose(clipped["b"]["c"], [[2.0]], rtol=1e-6)
    assert clipped["a"].dtype == np.float32
