"""Use deqcore's solvers and implicit adjoints from PyTorch and JAX models, through zero-copy DLPack views.

The adapters import their framework lazily; import the one you need:

* ``from deqcore.interop import torch as dqt`` — ``dqt.DEQ`` (a ``torch.nn.Module`` whose fixed point is
  solved by deqcore and differentiated by its implicit adjoint) and ``dqt.TorchLayer`` (a deqcore layer and
  its parameters as a ``torch.nn.Module``); needs ``pip install deqcore[torch]``.
* ``from deqcore.interop import jax as dqj`` — ``dqj.fixed_point`` (a differentiable fixed point that works
  eagerly and under ``jax.jit``, ``jax.grad`` and ``jax.vmap``); needs ``pip install deqcore[jax]``.

>>> import deqcore.interop
>>> sorted(deqcore.interop.ADAPTERS)
['jax', 'torch']
"""

ADAPTERS = {"torch": "deqcore.interop.torch", "jax": "deqcore.interop.jax"}

__all__ = ["ADAPTERS"]
