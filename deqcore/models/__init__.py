"""DEQ models as deqcore layers: DeepEquilibriumNetwork, SkipDeepEquilibriumNetwork, the multiscale
variants and MultiScaleNeuralODE, with their solution record."""

from .deq import DeepEquilibriumNetwork, SkipDeepEquilibriumNetwork, with_fixed_depth
from .multiscale import (
    MultiScaleDeepEquilibriumNetwork,
    MultiScaleNeuralODE,
    MultiScaleSkipDeepEquilibriumNetwork,
)
from .solution import DeepEquilibriumSolution

__all__ = [
    "DeepEquilibriumNetwork",
    "SkipDeepEquilibriumNetwork",
    "MultiScaleDeepEquilibriumNetwork",
    "MultiScaleSkipDeepEquilibriumNetwork",
    "MultiScaleNeuralODE",
    "DeepEquilibriumSolution",
    "with_fixed_depth",
]
