"""Data sets in stylestream's one internal format (see :mod:`models.data.dataset`)."""

from models.data.dataset import DataError, Dataset
from models.data.split import LeaveOneOutSplit, TemporalSplit

__all__ = ["Dataset", "DataError", "LeaveOneOutSplit", "TemporalSplit"]
