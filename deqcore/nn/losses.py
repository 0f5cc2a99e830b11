"""Losses returning ``(value, gradient)`` with respect to the prediction; the value is a 0-d array on
the prediction's device (call ``float()`` when you want it on the host).

>>> import numpy as np
>>> value, grad = softmax_cross_entropy(np.zeros((2, 4)), np.array([0, 3]))
>>> round(float(value), 6), grad.shape
(1.386294, (2, 4))
"""

from __future__ import annotations

from ..backend import check_float_array, get_namespace, to_host

__all__ = ["softmax_cross_entropy", "mse", "log_softmax", "accuracy"]


def _check_not_empty(array, name):
    """A mean over no samples is undefined (it was NaN or a ZeroDivisionError)."""
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {tuple(array.shape)}): a loss needs at least one sample")


def log_softmax(logits, axis=-1):
    """Stable ``log(softmax(logits))`` (log-sum-exp with the maximum subtracted).

    >>> import numpy as np
    >>> log_softmax(np.array([[1000.0, 1000.0]]))
    array([[-0.69314718, -0.69314718]])
    """
    xp = get_namespace(logits)
    shifted = logits - xp.max(logits, axis=axis, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))


def _targets(logits, labels, xp):
    """One-hot (or given probability) targets of shape ``logits.shape``."""
    if labels.ndim == logits.ndim:
        if labels.shape != logits.shape:
            raise ValueError(f"labels as probabilities must have the logits' shape {logits.shape}, "
                             f"got {labels.shape}")
        return labels.astype(logits.dtype, copy=False)
    if labels.ndim != logits.ndim - 1 or labels.shape != logits.shape[:-1] or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integer class indices of shape {logits.shape[:-1]} or "
                         f"probabilities of shape {logits.shape}; got {labels.dtype} array of shape "
                         f"{labels.shape}")
    classes = logits.shape[-1]
    bad = (labels < 0) | (labels >= classes)
    if bool(bad.any()):
        values = sorted({int(v) for v in to_host(labels[bad]).ravel()})
        shown = ", ".join(map(str, values[:10])) + (", ..." if len(values) > 10 else "")
        raise ValueError(f"labels must be class indices in [0, {classes}) for logits with {classes} classes; "
                         f"got {shown}")
    return (labels[..., None] == xp.arange(classes)).astype(logits.dtype)


def softmax_cross_entropy(logits, labels):
    """Mean over the batch of −Σ target · log softmax(logits); ``labels`` are class indices ``(B,)`` or
    probabilities ``(B, K)``. Returns ``(value, d value / d logits)``.

    >>> import numpy as np
    >>> value, grad = softmax_cross_entropy(np.array([[0.0, 0.0]]), np.array([1]))
    >>> round(float(value), 4), grad
    (0.6931, array([[ 0.5, -0.5]]))
    >>> softmax_cross_entropy(np.array([[0.0, 0.0]]), np.array([2]))
    Traceback (most recent call last):
    ...
    ValueError: labels must be class indices in [0, 2) for logits with 2 classes; got 2
    """
    check_float_array(logits, "logits")
    xp = get_namespace(logits, labels)
    if logits.ndim < 2:
        raise ValueError(f"logits must have shape (B, K), got {logits.shape}")
    _check_not_empty(logits, "logits")
    targets = _targets(logits, labels, xp)
    logp = log_softmax(logits)
    batch = logits.size // logits.shape[-1]
    value = -xp.sum(targets * logp) / batch
    grad = (xp.exp(logp) * xp.sum(targets, axis=-1, keepdims=True) - targets) / batch
    return value, grad


def mse(prediction, target):
    """Mean of squared differences over all elements; returns ``(value, d value / d prediction)``.

    >>> import numpy as np
    >>> value, grad = mse(np.array([1.0, 3.0]), np.array([0.0, 0.0]))
    >>> float(value), grad
    (5.0, array([1., 3.]))
    """
    check_float_array(prediction, "prediction")
    if prediction.shape != target.shape:
        raise ValueError(f"prediction and target shapes differ: {prediction.shape} and {target.shape}")
    _check_not_empty(prediction, "prediction")
    # the gradient in the prediction's dtype (a float64 target would make a float32 model's gradients float64)
    diff = prediction - get_namespace(prediction).asarray(target).astype(prediction.dtype, copy=False)
    return (diff * diff).mean(), (2.0 / diff.size) * diff


def accuracy(logits, labels):
    """Fraction of samples whose largest logit is the label (a 0-d array).

    >>> import numpy as np
    >>> float(accuracy(np.array([[2.0, 1.0], [0.0, 3.0]]), np.array([0, 0])))
    0.5
    """
    xp = get_namespace(logits, labels)
    _check_not_empty(logits, "logits")
    return xp.mean((xp.argmax(logits, axis=-1) == labels).astype(logits.dtype))
