"""Layers with hand-written VJPs/JVPs, parameter trees, optimisers, losses and safe save/load.

Every layer is a :class:`Layer`: a description without arrays, called as ``model(x, params, state)``
with ``params, state = nn.setup(rng, model)``. Batch is the leading axis; Conv2d is NCHW.

>>> import numpy as np
>>> from deqcore import nn
>>> model = nn.Parallel(nn.add, nn.Dense(2, 2, use_bias=False), nn.Dense(2, 2, use_bias=False))
>>> params, state = nn.setup(np.random.default_rng(0), model)
>>> x = (np.zeros((1, 2)), np.ones((1, 2)))                     # (z, x), as a DEQ calls it
>>> y, pullback, state = nn.vjp(model, x, params, state)
>>> (dz, dx), dparams = pullback(np.ones_like(y))
>>> y.shape, dz.shape, sorted(dparams)
((1, 2), (1, 2), ['layer_1', 'layer_2'])
"""

from .activations import ACTIVATIONS, Activation
from .containers import (
    Add,
    Chain,
    Concat,
    Connection,
    Flatten,
    NoOpLayer,
    Parallel,
    Reshape,
    WrappedFunction,
    add,
    concat,
)
from .conv import Conv2d, Upsample
from .core import Layer, ShapeError, bind, jvp, setup, testmode, trainmode, vjp
from .dropout import Dropout
from .io import load, save
from .linear import Dense
from .losses import accuracy, log_softmax, mse, softmax_cross_entropy
from .norm import BatchNorm, GroupNorm, LayerNorm
from .optim import SGD, Adam, AdamW, clip_by_global_norm, cosine_schedule
from .tree import (
    ravel,
    to_namespace,
    tree_add,
    tree_dot,
    tree_flatten,
    tree_leaves,
    tree_map,
    tree_norm,
    tree_paths,
    tree_scale,
    tree_sub,
    tree_unflatten,
    unravel,
    zeros_like,
)

__all__ = [
    "Layer", "ShapeError", "setup", "vjp", "jvp", "bind", "testmode", "trainmode",
    "Dense", "Conv2d", "Chain", "Parallel", "Connection", "Add", "Concat", "add", "concat",
    "NoOpLayer", "WrappedFunction", "Flatten", "Reshape", "Upsample", "Activation", "ACTIVATIONS",
    "LayerNorm", "GroupNorm", "BatchNorm", "Dropout",
    "tree_map", "tree_leaves", "tree_add", "tree_sub", "tree_scale", "tree_dot", "tree_norm",
    "tree_flatten", "tree_unflatten", "tree_paths", "ravel", "unravel", "zeros_like", "to_namespace",
    "SGD", "Adam", "AdamW", "clip_by_global_norm", "cosine_schedule",
    "softmax_cross_entropy", "mse", "log_softmax", "accuracy",
    "save", "load",
]
