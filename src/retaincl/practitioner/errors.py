"""The errors a practitioner causes: one line each, exit code 2 from the command line."""

from __future__ import annotations


class InputError(ValueError):
    """An image, a label or a folder that cannot be used; the message names it and says what to do."""


class ModelFolderError(RuntimeError):
    """A model folder that cannot be opened or written; the message names it and says what to do."""
