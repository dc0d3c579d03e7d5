"""Training and evaluation data: the canonical `Sample`, peer-system layouts, and loading."""

from vlrl.data.formats import FORMATS, detect_format
from vlrl.data.loading import LoadReport, RowError, load_samples
from vlrl.data.sample import DataError, Sample

__all__ = ["FORMATS", "DataError", "LoadReport", "RowError", "Sample", "detect_format", "load_samples"]
