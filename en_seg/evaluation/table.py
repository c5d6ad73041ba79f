"""One table for several evaluations of the same checkpoint."""
from typing import Dict, Mapping

from prettytable import PrettyTable

from .per_class_iou import CLASS_IOU_PREFIX


def format_metrics_table(columns: Mapping[str, Mapping[str, float]]) -> str:
    """Lay out evaluations side by side: summary rows first, then per-class IoU.

    Args:
        columns: column title (e.g. ``'single-scale'``) -> the metrics one evaluation
            returned (percent), as from :class:`PerClassIoUMetric`.

    Returns:
        The table as text: rows aAcc, mIoU, mAcc (those present), then ``IoU <class>``.
    """
    keys: Dict[str, None] = {}
    for metrics in columns.values():
        keys.update(dict.fromkeys(metrics))
    summary = [key for key in keys if not key.startswith(CLASS_IOU_PREFIX)]
    per_class = [key for key in keys if key.startswith(CLASS_IOU_PREFIX)]
    table = PrettyTable(['metric (%)', *columns])
    table.align['metric (%)'] = 'l'
    for key in summary + per_class:
        label = f'IoU {key[len(CLASS_IOU_PREFIX):]}' if key in per_class else key
        table.add_row([label, *(_cell(metrics.get(key)) for metrics in columns.values())])
    return table.get_string()


def _cell(value) -> str:
    return '-' if value is None else f'{float(value):.2f}'
