"""A NaN or infinite gradient is not applied by the optimisers: parameters and state stay as they were, the
caller is warned, and the next finite step equals the step of a run that never saw the bad gradient."""

import numpy as np
import pytest

from deqcore import nn
from deqcore.nn.optim import NonFiniteGradientWarning

OPTIMISERS = {
    "sgd": nn.SGD(lr=0.1),
    "sgd_momentum": nn.SGD(lr=nn.cosine_schedule(0.1, 10, warmup_steps=2), momentum=0.9),
    "sgd_nesterov": nn.SGD(lr=0.1, momentum=0.9, nesterov=True),
    "adam": nn.Adam(lr=nn.cosine_schedule(0.1, 10, warmup_steps=2)),
    "adamw": nn.AdamW(lr=0.05, weight_decay=0.1),
}


def _grads(rng):
    return {"w": rng.standard_normal((3, 2)), "b": [rng.standard_normal(2)]}


def _snapshot(tree):
    """Deep copies of the arrays (and scalars) of a tree, to compare against after an update."""
    return nn.tree_map(lambda a: np.array(a, copy=True) if isinstance(a, np.ndarray) else a, tree)


def _assert_trees_equal(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_trees_equal(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_trees_equal(x, y)
    else:
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", sorted(OPTIMISERS))
def test_a_non_finite_gradient_is_skipped_and_the_run_continues_as_without_it(name, bad):
    opt, rng = OPTIMISERS[name], np.random.default_rng(0)
    params = {"w": rng.standard_normal((3, 2)), "b": [rng.standard_normal(2)]}
    g1, g2 = _grads(rng), _grads(rng)
    reference = opt.update(g2, *reversed(opt.update(g1, opt.init(params), params)))   # the run without the bad step

    p1, s1 = opt.update(g1, opt.init(params), params)
    before = _snapshot((p1, s1))
    poisoned = _grads(rng)
    poisoned["b"][0][1] = bad                                    # one entry of one leaf
    with pytest.warns(NonFiniteGradientWarning, match="skipped"):
        p_bad, s_bad = opt.update(poisoned, s1, p1)
    _assert_trees_equal((p_bad, s_bad), before)                  # params and state (step counter too) unchanged
    after = opt.update(g2, s_bad, p_bad)
    _assert_trees_equal(after, reference)
    assert all(np.isfinite(leaf).all() for leaf in nn.tree_leaves(after[0]))
