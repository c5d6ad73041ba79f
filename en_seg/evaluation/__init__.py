"""Evaluation, the mmseg metrics of :mod:`.metrics` and the single/multi-scale table of
:mod:`.metrics_table`; may import mmseg and prettytable, no other en_seg package."""
from .metrics import PerClassIoUMetric
from .metrics_table import format_metrics_table

__all__ = ['PerClassIoUMetric', 'format_metrics_table']
