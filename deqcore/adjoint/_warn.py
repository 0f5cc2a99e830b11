"""Warnings about solves that did not converge, issued once per call site of the user's code.

The call site is the first frame outside deqcore (and outside torch/JAX, whose autograd engines call the
adapters' backward passes), so a training loop warns once, not once per step. The warning goes through
:func:`warnings.warn_explicit`, so the user's filters (``"error"``, ``"ignore"``) still apply.

>>> import warnings, numpy as np
>>> with warnings.catch_warnings(record=True) as caught:
...     warnings.simplefilter("always")
...     for _ in range(3):
...         _ = warn_failed("the adjoint solve", np.array([0, 1, 1]))
>>> len(caught), str(caught[0].message).split(":")[0]
(1, 'the adjoint solve failed for 2 of 3 samples (MAX_STEPS)')
"""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np

from ..results import ReturnCode, _codes_host

__all__ = ["warn_failed", "failure_summary"]

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SKIPPED = (_PACKAGE, os.sep + "torch" + os.sep, os.sep + "jax" + os.sep, os.sep + "jaxlib" + os.sep)
_SEEN: set = set()


def failure_summary(result) -> str | None:
    """``"2 of 3 samples (MAX_STEPS)"`` for the failed codes in ``result``, or None when all succeeded."""
    codes = _codes_host(result)
    failed = codes[codes != int(ReturnCode.SUCCESS)]
    if failed.size == 0:
        return None
    names = ", ".join(f"{ReturnCode(int(c)).name}" + (f" x{int((failed == c).sum())}" if np.unique(failed).size > 1
                                                       else "") for c in np.unique(failed))
    return f"{failed.size} of {codes.size} samples ({names})"


def _internal(filename: str) -> bool:
    return filename.startswith(_PACKAGE) or any(part in filename for part in _SKIPPED[1:])


def _call_site():
    frame = sys._getframe(2)
    while frame is not None and _internal(frame.f_code.co_filename):
        frame = frame.f_back
    if frame is None:
        return "<unknown>", 0, {}
    return frame.f_code.co_filename, frame.f_lineno, frame.f_globals


def warn_failed(what: str, result, advice: str = "") -> bool:
    """Warn (once per user call site and ``what``) that ``what`` failed for some samples; True if it warned."""
    if type(result) is np.ndarray and not result.any():      # every code SUCCESS (0): the common case, at once
        return False
    summary = failure_summary(result)
    if summary is None:
        return False
    filename, lineno, module_globals = _call_site()
    key = (what, filename, lineno)
    if key in _SEEN:
        return False
    _SEEN.add(key)
    codes = _codes_host(result)
    first = ReturnCode(int(codes[codes != int(ReturnCode.SUCCESS)][0]))
    message = f"{what} failed for {summary}: {first.message}"
    if advice:
        message += f". {advice}"
    warnings.warn_explicit(message, RuntimeWarning, filename, lineno,
                           module=module_globals.get("__name__", "<string>"), registry=None)
    return True


def reset() -> None:
    """Forget the call sites already warned about (for tests)."""
    _SEEN.clear()
