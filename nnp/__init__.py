"""Behler-Parrinello neural-network potentials on the G-metaD symmetry functions.

Train with ``gmetad train`` (:mod:`nnp.train`), test with ``gmetad test``
(:mod:`nnp.evaluate`), run as an ASE calculator (:class:`NNPCalculator`) or as an
i-PI client (``gmetad driver nnp --model model.pt``).
"""
from .calculator import NNPCalculator
from .model import ModelError, NNPModel, Prediction, load_model

__all__ = ["NNPCalculator", "NNPModel", "ModelError", "Prediction", "load_model"]
