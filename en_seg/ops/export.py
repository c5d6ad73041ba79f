"""Whether an exporter is tracing the model, so that no compiled op reaches its graph.

No ONNX runtime knows an ``en_seg::*`` operator, and neither of torch's ONNX exporters
translates one. While an exporter traces, the ops' one availability rule
(:func:`~en_seg.ops.library.available`) says no, and the layers compute the same function
with the plain PyTorch ops of :mod:`en_seg.ops.reference`, which every exporter translates:
statistics and ratio branch become ordinary nodes of the graph, for any caller of the
layers. The same holds for ``torch.export``, on which the dynamo exporter rests: its
programs hold no ``en_seg`` op and run without en-seg. ``torch.compile`` keeps the compiled
ops.
"""
import torch


def is_exporting() -> bool:
    """True while ``torch.onnx.export`` or ``torch.export.export`` traces the model.

    The TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) traces with
    ``torch.onnx.is_in_onnx_export()`` set; the dynamo exporter (``dynamo=True``) captures
    the model with ``torch.export``, under ``torch.compiler.is_exporting()``. Under
    ``torch.compile`` both are False.
    """
    # is_in_onnx_export imports a module at every call, and this runs at every layer's
    # forward; the TorchScript exporter always traces, so the cheap tests go first.
    return torch.compiler.is_exporting() or (torch.jit.is_tracing()
                                             and torch.onnx.is_in_onnx_export())
