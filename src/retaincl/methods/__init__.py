"""Continual-learning methods, one file per method or family, registered by name.

Every module under this package is imported on first registry look-up, so a new
method is one new file with ``@register_method("name")``; nothing else to edit.
"""

from retaincl.methods.base import Learner, LearnerContext, NoParams

__all__ = ["Learner", "LearnerContext", "NoParams"]
