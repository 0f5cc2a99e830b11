import numpy as np
import pytest

import deqcore as dq
from deqcore import _checks
from deqcore.backend import check_finite, check_float_array, float_dtype, get_namespace, to_host


def test_every_return_code_has_an_actionable_message():
    for code in dq.ReturnCode:
        assert isinstance(code.message, str) and len(code.message) > 10


def test_batched_solution_success_and_codes():
    result = np.array([0, 1, 0, 2])
    sol = dq.Solution(value=np.zeros((4, 2)), result=result, batched=True, residual=np.zeros(4))
    np.testing.assert_array_equal(sol.success, [True, False, True, False])
    assert sol.codes == [dq.ReturnCode.SUCCESS, dq.ReturnCode.MAX_STEPS, dq.ReturnCode.SUCCESS,
                         dq.ReturnCode.DIVERGED]
    with pytest.raises(dq.SolveError, match="1 of 4 samples MAX_STEPS") as info:
        sol.raise_if_failed()
    assert info.value.solution is sol


def test_unbatched_solution_raise():
    ok = dq.Solution(value=np.zeros(2), result=dq.ReturnCode.SUCCESS)
    assert ok.raise_if_failed() is ok and ok.success is True
    bad = dq.Solution(value=np.zeros(2), result=dq.ReturnCode.STALLED)
    assert bad.success is False
    with pytest.raises(dq.SolveError, match="STALLED"):
        bad.raise_if_failed()


def test_namespace_helpers():
    assert get_namespace(np.ones(2), None, 3.0) is np
    assert get_namespace() is np
    assert float_dtype(np.ones(2, np.float32)) == np.float32
    assert float_dtype(np.ones(2, np.int64)) == np.float64
    np.testing.assert_array_equal(to_host(np.arange(3)), [0, 1, 2])


def test_bad_arrays_named_in_errors():
    with pytest.raises(TypeError, match="y0 must have a floating dtype"):
        check_float_array(np.arange(3), "y0")
    with pytest.raises(TypeError, match="y0 must be a NumPy or CuPy array"):
        check_float_array([1.0, 2.0], "y0")
    with pytest.raises(TypeError, match="float16"):
        check_float_array(np.ones(2, np.float16), "y0")
    with pytest.raises(ValueError, match="x contains NaN"):
        check_finite(np.array([1.0, np.nan]), "x")


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_tolerance_checks(bad):
    with pytest.raises(ValueError, match="atol"):
        _checks.check_tolerance(bad, "atol")
    with pytest.raises(TypeError, match="atol"):
        _checks.check_tolerance("1e-3", "atol")


def test_choice_lists_options():
    with pytest.raises(ValueError, match="'a', 'b'"):
        _checks.check_choice("c", "mode", ("a", "b"))
