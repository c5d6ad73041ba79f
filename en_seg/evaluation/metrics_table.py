"""One table for several evaluations of the same checkpoint."""
import math
from typing import Dict, Mapping

from prettytable import PrettyTable

from .metrics.per_class_iou_metric import CLASS_IOU_PREFIX


def format_metrics_table(columns: Mapping[str, Mapping[str, float]]) -> str:
    """Lay out evaluations side by side: summary rows first, then per-class IoU.

    Args:
        columns: column title (e.g. ``'single-scale'``) -> the metrics one evaluation
            returned (percent), as from :class:`PerClassIoUMetric`.

    Returns:
        The table as text: rows aAcc, mIoU, mAcc (those present), then ``IoU <class>``
        for every class with an IoU in some column; classes absent from both ground truth
        and predictions everywhere (NaN in every column) are counted in a last line.
    """
    keys: Dict[str, None] = {}
    for metrics in columns.values():
        keys.update(dict.fromkeys(metrics))
    summary = [key for key in keys if not key.startswith(CLASS_IOU_PREFIX)]
    per_class = [key for key in keys if key.startswith(CLASS_IOU_PREFIX)]
    table = PrettyTable(['metric (%)', *columns])
    table.align['metric (%)'] = 'l'
    absent = [key for key in per_class
              if all(math.isnan(metrics.get(key, math.nan)) for metrics in columns.values())]
    for key in summary + [key for key in per_class if key not in absent]:
        label = f'IoU {key[len(CLASS_IOU_PREFIX):]}' if key in per_class else key
        table.add_row([label, *(_cell(metrics.get(key)) for metrics in columns.values())])
    text = table.get_string()
    if absent:
        text += (f'\n{len(absent)} of {len(per_class)} classes are absent from the ground '
                 'truth and the predictions (IoU undefined) and are not listed.')
    return text


def _cell(value) -> str:
    return '-' if value is None else f'{float(value):.2f}'
