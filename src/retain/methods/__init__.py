"""Continual-learning methods, one file per method or family, registered by name."""

from retain.methods import linear, ranpac, simplecil  # noqa: F401  (registers built-ins)
from retain.methods.base import Learner, LearnerContext, NoParams

__all__ = ["Learner", "LearnerContext", "NoParams"]
