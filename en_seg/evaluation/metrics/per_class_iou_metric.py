"""mmseg's IoUMetric that also returns every class's IoU."""
from typing import Dict, List

from mmseg.evaluation import IoUMetric
from mmseg.registry import METRICS

#: Prefix of the per-class keys in the returned metrics, e.g. ``IoU.wall``.
CLASS_IOU_PREFIX = 'IoU.'


@METRICS.register_module()
class PerClassIoUMetric(IoUMetric):
    """:class:`mmseg.evaluation.IoUMetric` whose results also hold each class's IoU.

    mmseg prints the per-class table to the log only; returning the values lets
    ``tools/test.py`` put single- and multi-scale results side by side.

    Returns (from ``evaluate``): mmseg's ``aAcc``, ``mIoU``, ``mAcc`` and one
    ``IoU.<class name>`` per class, all in percent rounded to 0.01; a class absent from
    both prediction and ground truth has IoU NaN (or ``nan_to_num``).
    Arguments are those of ``IoUMetric``.
    """

    def compute_metrics(self, results: List[tuple]) -> Dict[str, float]:
        metrics = super().compute_metrics(results)
        if self.format_only:
            return metrics
        intersect, union, pred_area, label_area = (sum(areas) for areas in zip(*results))
        per_class = self.total_area_to_metrics(intersect, union, pred_area, label_area,
                                               ['mIoU'], self.nan_to_num, self.beta)['IoU']
        for name, iou in zip(self.dataset_meta['classes'], per_class):
            metrics[CLASS_IOU_PREFIX + name] = round(float(iou) * 100, 2)
        return metrics
