"""Evaluation: per-class IoU next to mmseg's summary, and the single/multi-scale table."""
from .per_class_iou import PerClassIoUMetric
from .table import format_metrics_table

__all__ = ['PerClassIoUMetric', 'format_metrics_table']
