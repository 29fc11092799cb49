"""retaincl: continual learning with pre-trained models.

``from retaincl import ContinualModel`` for the Python API (learn / predict / save / load);
the ``retaincl`` command for experiments.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["ContinualModel", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "ContinualModel":  # imported lazily: `import retaincl` stays light
        from retaincl.api import ContinualModel

        return ContinualModel
    raise AttributeError(f"module 'retaincl' has no attribute {name!r}")
