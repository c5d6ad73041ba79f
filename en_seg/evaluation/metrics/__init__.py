"""mmseg metrics registered in ``METRICS``; may import mmseg, no other en_seg package."""
from .per_class_iou_metric import PerClassIoUMetric

__all__ = ['PerClassIoUMetric']
