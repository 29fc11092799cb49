"""Data sources, image sets, domain shifts and scenarios."""

from retaincl.data import scenarios, sources  # noqa: F401  (registers built-ins)
from retaincl.data.images import ImageSet, InputsOnly, TaskSplit
from retaincl.data.scenarios import Stream, Task, build_stream
from retaincl.data.sources import DataSourceError, SourceData, load_source

__all__ = [
    "DataSourceError",
    "ImageSet",
    "InputsOnly",
    "SourceData",
    "Stream",
    "Task",
    "TaskSplit",
    "build_stream",
    "load_source",
]
