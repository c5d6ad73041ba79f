"""The layers, the ops and their autograd work with torch alone (no OpenMMLab)."""
import subprocess
import sys

OPENMMLAB = ('mmengine', 'mmcv', 'mmseg', 'mmpretrain')

# Run in a fresh interpreter in which the OpenMMLab packages cannot be imported.
SCRIPT = f'''
import sys
for name in {OPENMMLAB!r}:
    sys.modules[name] = None
import torch
import en_seg
from en_seg.models import ExemplarNorm2d, SwitchableNorm2d
from en_seg.ops import EXTENSION_AVAILABLE
assert EXTENSION_AVAILABLE
assert en_seg.__all__ == ['ExemplarNorm2d', 'SwitchableNorm2d', '__version__']
for cls in (ExemplarNorm2d, SwitchableNorm2d):
    layer = cls(32)
    x = torch.randn(2, 32, 4, 4, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda x: layer.double()(x), (x,))
loaded = [m for m, module in sys.modules.items()
          if m.split('.')[0] in {OPENMMLAB!r} and module is not None]
assert not loaded, loaded
print('torch only: OK')
'''


def test_layers_and_ops_import_and_differentiate_without_openmmlab():
    result = subprocess.run([sys.executable, '-c', SCRIPT], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert 'torch only: OK' in result.stdout


def test_import_registers_into_the_installed_toolboxes():
    from mmengine.registry import HOOKS, MODELS
    from mmseg.registry import METRICS

    import en_seg
    assert MODELS.get('EN') is en_seg.ExemplarNorm2d
    assert MODELS.get('SN') is en_seg.SwitchableNorm2d
    assert HOOKS.get('ENRatioLoggerHook') is en_seg.ENRatioLoggerHook
    assert METRICS.get('PerClassIoUMetric') is en_seg.PerClassIoUMetric
