"""ONNX export of a segmentor's logits, and onnxruntime's output of the exported file.

tools/export_onnx.py and the tests use it. EN and SN layers export as plain ONNX operators:
while an exporter traces, ``en_seg.ops`` computes with composed PyTorch ops instead of
its compiled ones (en_seg/ops/export.py). Exporting and running need onnx and onnxruntime,
and the dynamo exporter onnxscript: ``pip install 'en-seg[onnx]'``.
"""
from importlib.util import find_spec
from typing import List, Optional

import torch
from torch import Tensor, nn

#: The names of the exported graph's input and output.
INPUT, OUTPUT = 'inputs', 'logits'
#: The dimensions of ``inputs`` and ``logits`` that ``dynamic=True`` leaves free: N, H, W.
DYNAMIC_DIMS = {0: 'batch', 2: 'height', 3: 'width'}
#: What installs the packages of :func:`missing_packages`.
INSTALL_HINT = "pip install 'en-seg[onnx]'"


def missing_packages(dynamo: bool) -> List[str]:
    """The packages that exporting with the chosen exporter and running onnxruntime need
    and that are not installed: onnx, onnxruntime, and onnxscript for ``dynamo=True``."""
    names = ['onnx', 'onnxruntime'] + (['onnxscript'] if dynamo else [])
    return [name for name in names if find_spec(name) is None]


class SegmentorLogits(nn.Module):
    """An mmseg segmentor's tensor forward, ``segmentor(inputs, mode='tensor')``.

    Input: (N, 3, H, W) float32 images, already normalized as the config's
    ``data_preprocessor`` does (mean, std, channel order). Output: the decode head's
    (N, num_classes, h, w) logits, at its resolution (H / 8 for output stride 8), before
    mmseg resizes them to the image.
    """

    def __init__(self, segmentor: nn.Module) -> None:
        super().__init__()
        self.segmentor = segmentor

    def forward(self, inputs: Tensor) -> Tensor:
        return self.segmentor(inputs, mode='tensor')


def export_onnx(model: nn.Module, sample: Tensor, path: str, *, dynamo: bool = True,
                dynamic: bool = False, opset: Optional[int] = None,
                optimize: bool = True) -> None:
    """Write ``model``, traced on ``sample``, to the ONNX file ``path``.

    Args:
        model: one tensor in (``inputs``), one tensor out (``logits``); exported in the
            mode it is in (call ``model.eval()`` first for inference).
        sample: the example input, e.g. (1, 3, H, W).
        path: the file written; the weights are inside it (no external data file).
        dynamo: torch's ``torch.export``-based exporter (``torch.onnx.export(...,
            dynamo=True)``); False for the TorchScript-based one. Default: True.
        dynamic: leave N, H and W of ``inputs`` and ``logits`` free (:data:`DYNAMIC_DIMS`);
            else the graph accepts ``sample``'s shape only. Default: False.
        opset: the ONNX opset; None for the exporter's default. Default: None.
        optimize: with ``dynamo=True``, let onnxscript's optimizer simplify the graph
            (constant folding, unused nodes), as torch does by default; False exports
            faster. Default: True.

    Raises:
        torch.onnx.errors.OnnxExporterError and what the exporters raise, for a model
        they cannot export.
    """
    if dynamo:
        shapes = ({dim: torch.export.Dim.DYNAMIC for dim in DYNAMIC_DIMS},) if dynamic else None
        torch.onnx.export(model, (sample,), path, dynamo=True, input_names=[INPUT],
                          output_names=[OUTPUT], opset_version=opset,
                          dynamic_shapes=shapes, optimize=optimize, external_data=False)
    else:
        axes = {INPUT: DYNAMIC_DIMS, OUTPUT: DYNAMIC_DIMS} if dynamic else None
        torch.onnx.export(model, (sample,), path, dynamo=False, input_names=[INPUT],
                          output_names=[OUTPUT], opset_version=opset, dynamic_axes=axes)


def onnxruntime_logits(path: str, *inputs: Tensor) -> List[Tensor]:
    """Run the file written by :func:`export_onnx` on each of ``inputs`` with
    onnxruntime's CPU provider, in one session; returns the ``logits`` as tensors."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    return [torch.from_numpy(session.run([OUTPUT], {INPUT: x.detach().cpu().numpy()})[0])
            for x in inputs]
