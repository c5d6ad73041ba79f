"""ONNX export of EN and SN models: with both of torch's exporters the graph holds no
``en_seg`` op (en_seg/ops/export.py), onnxruntime reproduces PyTorch at the export shape
and, with dynamic shapes, at others; tools/export_onnx.py end to end."""
import os.path as osp
import subprocess
import sys
import warnings

import pytest
import torch
from mmengine.config import Config
from mmseg.apis import init_model

from en_seg.models import ExemplarNorm2d, SwitchableNorm2d
from en_seg.ops.export import is_exporting
from en_seg.utils.onnx_export import SegmentorLogits, export_onnx, onnxruntime_logits
from reference import randomized

onnx = pytest.importorskip('onnx')
pytest.importorskip('onnxruntime')
pytest.importorskip('onnxscript')  # the dynamo exporter's translations

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(REPO, 'configs/exemplar_norm/deeplabv3_r50-d8_en_8xb2-80k_ade20k-512x512.py')
TOOL = osp.join(REPO, 'tools/export_onnx.py')
#: The EN config with a ResNet-18 backbone and narrow heads: 29 EN layers rather than 62,
#: for the tool's runs.
SMALL = {'model.backbone.depth': 18, 'model.decode_head.in_channels': 512,
         'model.decode_head.channels': 64, 'model.auxiliary_head.in_channels': 256,
         'model.auxiliary_head.channels': 32}
SMALL_OPTIONS = [f'{key}={value}' for key, value in SMALL.items()]


def segmentor_logits(config: Config) -> SegmentorLogits:
    """The config's model built by mmseg's init_model, in evaluation mode, with every EN
    and SN layer's parameters and running statistics randomized: at initialisation the
    ratios are uniform, and a graph that ignored the ratio branch would still match."""
    model = SegmentorLogits(init_model(config, None, device='cpu')).eval()
    norms = [m for m in model.modules() if isinstance(m, (ExemplarNorm2d, SwitchableNorm2d))]
    assert norms
    for seed, layer in enumerate(norms):
        randomized(layer, seed)
        if isinstance(layer, ExemplarNorm2d):
            with torch.no_grad():  # keep tanh of the ratio branch out of saturation
                layer.ratio_fc1.weight.mul_(1e-3)
    return model


def export_recording_warnings(model, sample, path, **kwargs):
    """export_onnx, and the messages of the warnings that en_seg emitted meanwhile."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        export_onnx(model, sample, str(path), **kwargs)
    return [str(w.message) for w in caught if str(w.message).startswith('en_seg')]


def assert_plain_onnx(path):
    """A valid ONNX model of standard operators only: no en_seg (or other custom) op."""
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    domains = {node.domain for node in model.graph.node}
    assert domains <= {'', 'ai.onnx'}, domains
    assert not model.functions, [f.name for f in model.functions]
    return model


def assert_parity(path, model, *inputs, rtol=1e-4):
    """onnxruntime's outputs of the file equal the model's for each of ``inputs``, to
    ``rtol`` of the largest |output|."""
    for x, actual in zip(inputs, onnxruntime_logits(str(path), *inputs)):
        with torch.no_grad():
            expected = model(x)
        assert actual.shape == expected.shape
        torch.testing.assert_close(actual, expected, rtol=rtol,
                                   atol=rtol * expected.abs().max().item())


@pytest.fixture(scope='module')
def en_segmentor():
    """The paper's ADE20K EN DeepLabV3 R50-D8, randomized (62 EN layers)."""
    return segmentor_logits(Config.fromfile(CONFIG))


def test_en_config_exports_with_the_torchscript_exporter_dynamic_n_h_w(en_segmentor,
                                                                        tmp_path):
    path = tmp_path / 'en.onnx'
    sample = torch.randn(2, 3, 64, 64)
    assert export_recording_warnings(en_segmentor, sample, path, dynamo=False,
                                     dynamic=True) == []
    assert_plain_onnx(path)
    assert_parity(path, en_segmentor, sample, torch.randn(1, 3, 96, 80))


def test_en_config_exports_with_the_dynamo_exporter(en_segmentor, tmp_path):
    path = tmp_path / 'en.onnx'
    sample = torch.randn(1, 3, 64, 64)
    # Without onnxscript's optimizer, which is slow on a graph this size; the layer tests
    # run it.
    assert export_recording_warnings(en_segmentor, sample, path, dynamo=True,
                                     optimize=False) == []
    graph = assert_plain_onnx(path).graph
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [1, 3, 64, 64]
    assert_parity(path, en_segmentor, sample)


LAYERS = [pytest.param(ExemplarNorm2d, id='EN'), pytest.param(SwitchableNorm2d, id='SN')]
EXPORTERS = [pytest.param(False, id='torchscript'), pytest.param(True, id='dynamo')]


@pytest.mark.parametrize('dynamo', EXPORTERS)
@pytest.mark.parametrize('cls', LAYERS)
def test_layer_exports_with_static_and_dynamic_shapes(cls, dynamo, tmp_path):
    layer = randomized(cls(32)).eval()
    sample = torch.randn(2, 32, 6, 7)
    for dynamic in (False, True):
        path = tmp_path / f'{dynamic}.onnx'
        assert export_recording_warnings(layer, sample, path, dynamo=dynamo,
                                         dynamic=dynamic) == []
        assert_plain_onnx(path)
        others = (torch.randn(3, 32, 9, 5), torch.randn(1, 32, 1, 1)) if dynamic else ()
        assert_parity(path, layer, sample, *others, rtol=1e-5)


@pytest.mark.parametrize('dynamo', EXPORTERS)
def test_is_exporting_only_while_an_exporter_traces(dynamo, tmp_path):
    seen = []  # torch.export restores the module's attributes after tracing

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(is_exporting())
            return x + 1

    probe = Probe().eval()
    probe(torch.zeros(1))
    torch.onnx.export(probe, (torch.zeros(1),), str(tmp_path / 'probe.onnx'), dynamo=dynamo)
    torch.compile(probe, backend='eager', fullgraph=True)(torch.zeros(1))
    assert seen[0] is False and seen[-1] is False, seen
    assert seen[1:-1] and all(seen[1:-1]), seen


@pytest.mark.parametrize('training', [False, True], ids=['eval', 'train'])
@pytest.mark.parametrize('cls', LAYERS)
def test_torch_compile_keeps_the_compiled_ops(cls, training):
    graphs = []

    def backend(graph_module, inputs):
        graphs.append(graph_module)
        return graph_module.forward

    layer = cls(32).train(training)
    x = torch.randn(2, 32, 5, 5, requires_grad=training)
    torch.compile(layer, backend=backend, fullgraph=True)(x)
    ops = {str(node.target).split('.')[1] for node in graphs[0].graph.nodes
           if str(node.target).startswith('en_seg.')}
    # Dynamo's graph holds the layer op (en_seg::exemplar_norm or switchable_norm), a
    # composite that AOT autograd opens into the inner ops.
    assert ops & {'channel_moments', 'exemplar_norm', 'switchable_norm'}, ops


def run_tool(*args):
    return subprocess.run([sys.executable, TOOL, *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope='module')
def small_checkpoint(tmp_path_factory):
    """A checkpoint of the small EN model, as tools/train.py saves one, and the model."""
    config = Config.fromfile(CONFIG)
    config.merge_from_dict(SMALL)
    model = segmentor_logits(config)
    path = tmp_path_factory.mktemp('checkpoint') / 'iter_1.pth'
    torch.save({'meta': {'iter': 1, 'dataset_meta': {'classes': ('wall',) * 150}},
                'state_dict': model.segmentor.state_dict()}, path)
    return path, model


def test_tool_exports_a_checkpoint_and_checks_it_with_onnxruntime(small_checkpoint,
                                                                   tmp_path):
    checkpoint, model = small_checkpoint
    out = tmp_path / 'small.onnx'
    result = run_tool(CONFIG, checkpoint, out, '--shape', 64, 48, '--dynamic', '--no-dynamo',
                      '--cfg-options', *SMALL_OPTIONS)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    checks = [line for line in result.stdout.splitlines() if 'onnxruntime vs PyTorch' in line]
    assert len(checks) == 2 and all(line.endswith('OK') for line in checks), result.stdout
    assert '(2, 3, 64, 48)' in checks[0] and '(1, 3, 96, 80)' in checks[1]
    assert_plain_onnx(out)
    # The file holds the checkpoint's weights, not a fresh initialisation.
    assert_parity(out, model, torch.randn(1, 3, 40, 56))


def test_tool_fails_when_onnxruntime_differs_beyond_the_tolerance(tmp_path):
    out = tmp_path / 'small.onnx'
    result = run_tool(CONFIG, 'none', out, '--shape', 32, 32, '--no-dynamo', '--atol', 0,
                      '--rtol', 0, '--cfg-options', *SMALL_OPTIONS)
    assert result.returncode != 0
    assert 'FAILED' in result.stdout and 'does not reproduce' in result.stderr, (
        result.stdout[-2000:] + result.stderr[-2000:])


def test_tool_without_onnxruntime_names_the_extra(tmp_path):
    # onnxruntime made unimportable in a fresh interpreter, then the tool run as a script.
    script = ('import runpy, sys; sys.modules["onnxruntime"] = None; '
              f'sys.argv = [{TOOL!r}, {CONFIG!r}, "none", {str(tmp_path / "x.onnx")!r}]; '
              f'runpy.run_path({TOOL!r}, run_name="__main__")')
    result = subprocess.run([sys.executable, '-c', script], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "tools/export_onnx.py needs onnxruntime: pip install 'en-seg[onnx]'")
    assert not (tmp_path / 'x.onnx').exists()


def test_tool_names_what_a_checkpoint_without_meta_lacks(tmp_path):
    checkpoint = tmp_path / 'bare.pth'
    torch.save({'state_dict': {}}, checkpoint)
    result = run_tool(CONFIG, checkpoint, tmp_path / 'x.onnx', '--cfg-options', *SMALL_OPTIONS)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        f"checkpoint {checkpoint} has no 'meta' entry, which mmseg's init_model reads: save "
        "it as tools/train.py does, or as {'meta': {}, 'state_dict': ...}")
