"""Matrix-free linear operators acting on one system or on a batch of independent systems.

A :class:`LinearOperator` of ``shape=(n, n)`` describes ONE system. It applies to a vector ``v`` of shape
``(n,)`` or to a batch ``(B, n)`` at once, block-diagonally: row ``i`` of the output depends on row ``i`` of
the input only (sample ``i``'s own system). One call therefore serves every sample of a batch.

>>> import numpy as np
>>> A = np.array([[2.0, 1.0], [0.0, 3.0]])
>>> op = LinearOperator(lambda v: v @ A.T, lambda v: v @ A, shape=(2, 2))
>>> op.matvec(np.array([1.0, 1.0]))
array([3., 3.])
>>> op.T.matvec(np.array([1.0, 1.0]))
array([2., 4.])
>>> np.array_equal(op.to_dense(), A)
True
"""

from __future__ import annotations

import numbers

import numpy as np

from .._checks import check_callable
from ..backend import get_namespace
from ._validate import check_square

__all__ = ["LinearOperator", "as_operator"]


def _check_shape(shape) -> tuple:
    if (
        not isinstance(shape, tuple)
        or len(shape) != 2
        or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in shape)
    ):
        raise TypeError(f"shape must be a tuple of two integers (n, n), got {shape!r}")
    n, m = int(shape[0]), int(shape[1])
    if n < 1 or n != m:
        raise ValueError(f"shape must be square (n, n) with n >= 1, got {shape!r}")
    return (n, n)


class LinearOperator:
    """A square linear map given by functions, for matrix-free solvers.

    Args:
        matvec: ``matvec(v) -> A v`` for ``v`` of shape ``(n,)`` or ``(B, n)`` (one system per row).
        rmatvec: optional ``rmatvec(v) -> A^T v`` with the same shapes; needed by :attr:`T`.
        shape: ``(n, n)``, the size of one system.
        dtype: the dtype of the map, or None when it follows its input.

    Use :meth:`from_matrix` for a dense matrix or a stack of matrices (one per sample).

    >>> import numpy as np
    >>> op = LinearOperator(lambda v: 2.0 * v, shape=(3, 3))
    >>> op.matvec(np.ones((2, 3)))
    array([[2., 2., 2.],
           [2., 2., 2.]])
    >>> op.T
    Traceback (most recent call last):
    ...
    TypeError: this LinearOperator has no rmatvec; pass rmatvec=... (a function computing A^T v) to use .T
    """

    def __init__(self, matvec, rmatvec=None, *, shape, dtype=None):
        self._matvec = check_callable(matvec, "matvec")
        self._rmatvec = None if rmatvec is None else check_callable(rmatvec, "rmatvec")
        self.shape = _check_shape(shape)
        if dtype is not None:
            dtype = np.dtype(dtype)
            if dtype.kind != "f":
                raise TypeError(f"dtype must be a floating dtype (float32 or float64), got {dtype}")
        self.dtype = dtype
        self.matrix = None  # the dense (n, n) or (B, n, n) matrix when built by from_matrix
        self.batch_size = None  # B when the operator holds one matrix per sample
        self._matvec_name = "matvec"  # how shape errors name matvec ("preconditioner" for a preconditioner)

    @classmethod
    def from_matrix(cls, A) -> "LinearOperator":
        """The operator of a dense matrix ``A`` of shape ``(n, n)``, or ``(B, n, n)``: one matrix per sample.

        A batched operator applies to ``(B, n)`` batches only.

        >>> import numpy as np
        >>> A = np.stack([np.eye(2), 2.0 * np.eye(2)])
        >>> LinearOperator.from_matrix(A).matvec(np.ones((2, 2)))
        array([[1., 1.],
               [2., 2.]])
        """
        xp = check_square(A, "A")
        if A.ndim == 2:
            op = cls(lambda v: v @ A.T, lambda v: v @ A, shape=A.shape, dtype=A.dtype)
        else:
            op = cls(
                lambda v: xp.matmul(A, v[:, :, None])[:, :, 0],
                lambda v: xp.matmul(v[:, None, :], A)[:, 0],
                shape=A.shape[1:],
                dtype=A.dtype,
            )
            op.batch_size = A.shape[0]
        op.matrix = A
        return op

    @property
    def n(self) -> int:
        """The size of one system."""
        return self.shape[0]

    def _apply(self, fn, v, name):
        if v.ndim not in (1, 2) or v.shape[-1] != self.n:
            raise ValueError(f"v must have shape ({self.n},) or (B, {self.n}), got {tuple(v.shape)}")
        if self.batch_size is not None and (v.ndim != 2 or v.shape[0] != self.batch_size):
            raise ValueError(
                f"v must have shape ({self.batch_size}, {self.n}) for this operator of {self.batch_size} "
                f"matrices, got {tuple(v.shape)}"
            )
        out = fn(v)
        if tuple(getattr(out, "shape", ())) != tuple(v.shape):
            raise ValueError(
                f"{name} returned shape {tuple(getattr(out, 'shape', ()))} for input shape {tuple(v.shape)}; "
                f"it must return an array of the input's shape"
            )
        return out

    def matvec(self, v):
        """``A v`` for ``v`` of shape ``(n,)`` or ``(B, n)``."""
        return self._apply(self._matvec, v, self._matvec_name)

    def rmatvec(self, v):
        """``A^T v`` for ``v`` of shape ``(n,)`` or ``(B, n)``."""
        if self._rmatvec is None:
            raise TypeError(self._no_rmatvec_message())
        return self._apply(self._rmatvec, v, "rmatvec")

    @staticmethod
    def _no_rmatvec_message() -> str:
        return "this LinearOperator has no rmatvec; pass rmatvec=... (a function computing A^T v) to use .T"

    @property
    def T(self) -> "LinearOperator":
        """The transposed operator (swaps matvec and rmatvec)."""
        if self._rmatvec is None:
            raise TypeError(self._no_rmatvec_message())
        op = LinearOperator(self._rmatvec, self._matvec, shape=self.shape, dtype=self.dtype)
        op.batch_size = self.batch_size
        if self.matrix is not None:
            op.matrix = self.matrix.swapaxes(-1, -2)
        return op

    def to_dense(self, batch_size=None, *, xp=None, dtype=None):
        """The dense matrix, built by applying ``matvec`` to the identity's columns.

        Args:
            batch_size: None for an operator that is the same for every row: one ``matvec`` call on the
                ``(n, n)`` identity gives ``(n, n)``. ``B`` for one system per sample: ``n`` calls on
                ``(B, n)`` unit vectors give ``(B, n, n)``.
            xp, dtype: namespace and dtype of the unit vectors (default: numpy, and the operator's dtype or
                float64). An operator built by :meth:`from_matrix` returns its matrix without calls.

        >>> import numpy as np
        >>> op = LinearOperator(lambda v: v * np.arange(1.0, 3.0), shape=(2, 2))
        >>> op.to_dense(batch_size=2)
        array([[[1., 0.],
                [0., 2.]],
        <BLANKLINE>
               [[1., 0.],
                [0., 2.]]])
        """
        if batch_size is not None:
            if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
                raise ValueError(f"batch_size must be None or an integer >= 1, got {batch_size!r}")
            batch_size = int(batch_size)
        if self.matrix is not None:
            A = self.matrix
            if A.ndim == 3 and batch_size is not None and batch_size != A.shape[0]:
                raise ValueError(f"batch_size must be {A.shape[0]} for this operator, got {batch_size}")
            if A.ndim == 2 and batch_size is not None:
                return get_namespace(A).broadcast_to(A, (batch_size,) + A.shape).copy()
            return A
        xp = np if xp is None else xp
        dtype = np.dtype(next((d for d in (dtype, self.dtype) if d is not None), np.float64))
        n = self.n
        if batch_size is None:
            return xp.ascontiguousarray(self.matvec(xp.eye(n, dtype=dtype)).T)
        dense = xp.empty((batch_size, n, n), dtype=dtype)
        unit = xp.zeros((batch_size, n), dtype=dtype)
        for k in range(n):
            unit[:, k] = 1
            dense[:, :, k] = self.matvec(unit)
            unit[:, k] = 0
        return dense

    def __repr__(self) -> str:
        batch = "" if self.batch_size is None else f", batch_size={self.batch_size}"
        return f"LinearOperator(shape={self.shape}, dtype={self.dtype}{batch})"


def as_operator(A_or_op) -> LinearOperator:
    """A :class:`LinearOperator` from an operator (returned as is) or a dense array (``from_matrix``)."""
    return A_or_op if isinstance(A_or_op, LinearOperator) else LinearOperator.from_matrix(A_or_op)
