"""sync_stats=True (SyncEN, SyncSN): two gloo processes with a share of the batch each
compute what one process computes on the whole batch
(docs/method.md#synchronization-across-processes); without a process group of two the
layers are EN and SN and warn once."""
import os
import os.path as osp
import subprocess
import sys
import warnings

import pytest
import torch
import torch.distributed as dist

from en_seg.models import (ExemplarNorm2d, SwitchableNorm2d, SyncExemplarNorm2d,
                           SyncSwitchableNorm2d, mixed_norm)
from en_seg.ops import EXTENSION_AVAILABLE

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
LAYERS = {'EN': ExemplarNorm2d, 'SN': SwitchableNorm2d}
C, H, W = 16, 5, 5
STEPS = 2
TIGHT = dict(rtol=1e-10, atol=1e-10)

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason='needs torch.distributed with gloo')

IMPLS = ['reference'] + (['op'] if EXTENSION_AVAILABLE else [])
#: (layer, impl, per-rank batch sizes, process group) of the training cases.
TRAIN_CASES = [(layer, impl, split, 'both' if split == (1, 3) else 'default')
               for layer in LAYERS for impl in IMPLS for split in ((2, 2), (1, 3))]


def case_name(layer, impl, sizes, group):
    return f'{layer}-{impl}-{sizes[0]}+{sizes[1]}-{group}-group'


def kwargs_of(layer, impl):
    return dict(impl=impl, reduction=4) if layer == 'EN' else dict(impl=impl)


def random_state(layer, kwargs):
    """A state far from the initial one: non-uniform ratios, running statistics that
    differ from a batch's, so that every parameter gets a gradient."""
    module = LAYERS[layer](C, **kwargs).double()
    with torch.no_grad():
        for name, value in module.state_dict().items():
            if value.is_floating_point():
                value.copy_(torch.randn_like(value) * 0.5
                            + (1 if name in ('weight', 'running_var') else 0))
                if name == 'running_var':
                    value.abs_()
    return module.state_dict()


def batch(n, h=H, w=W):
    """Samples and channels on very different scales, so that the BN statistics of part
    of the batch are far from those of the whole."""
    scale = torch.arange(1, n + 1, dtype=torch.float64)[:, None, None, None]
    offset = torch.linspace(-3, 3, C, dtype=torch.float64)[None, :, None, None]
    return torch.randn(n, C, h, w, dtype=torch.float64) * scale + offset * scale


def split(tensors, sizes):
    return [list(part) for part in zip(*[t.split(list(sizes)) for t in tensors])]


def make_cases():
    cases = {}
    for layer, impl, sizes, group in TRAIN_CASES:
        kwargs = kwargs_of(layer, impl)
        inputs = [batch(sum(sizes)) for _ in range(STEPS)]
        weights = [torch.randn_like(x) for x in inputs]
        cases[case_name(layer, impl, sizes, group)] = dict(
            layer=layer, channels=C, kwargs=kwargs, state=random_state(layer, kwargs),
            group=group, train=True, norm_eval=False, backward=True,
            full_inputs=inputs, full_weights=weights,
            inputs=split(inputs, sizes), weights=split(weights, sizes))
    # Where the BN member uses batch statistics outside training, or running ones in
    # training, nothing is reduced: each rank normalizes with its own share.
    local = dict(layer='EN', channels=C, group='default', backward=False,
                 inputs=split([batch(4)], (2, 2)), weights=[[None], [None]])
    cases['eval-without-running-stats'] = dict(
        local, kwargs=dict(reduction=4, track_running_stats=False),
        state=random_state('EN', dict(reduction=4, track_running_stats=False)),
        train=False, norm_eval=False)
    cases['norm-eval'] = dict(local, kwargs=dict(reduction=4),
                              state=random_state('EN', dict(reduction=4)),
                              train=True, norm_eval=True)
    # A group of one process: the layer is EN and warns.
    cases['group-of-one'] = dict(local, kwargs=dict(reduction=4), group='own',
                                 state=random_state('EN', dict(reduction=4)),
                                 train=True, norm_eval=False)
    # Different image sizes per rank: every value weighs the same (momentum 1 makes the
    # running statistics those of the batch).
    cases['image-sizes'] = dict(
        local, kwargs=dict(reduction=4, momentum=1.0),
        state=random_state('EN', dict(reduction=4)), train=True, norm_eval=False,
        inputs=[[batch(1, 4, 4)], [batch(2, 6, 6)]])
    return cases


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """The cases, and what each of the two ranks saved."""
    tmp = tmp_path_factory.mktemp('sync_stats')
    cases = make_cases()
    torch.save(cases, tmp / 'cases.pt')
    result = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
         'tests/sync_stats_worker.py', str(tmp / 'cases.pt'), str(tmp)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, 'PYTHONPATH': REPO, 'OMP_NUM_THREADS': '1'})
    assert result.returncode == 0, result.stderr[-6000:]
    ranks = [torch.load(tmp / f'rank{r}.pt', weights_only=True) for r in range(2)]
    return cases, ranks


def single_process(case, inputs, weights):
    """One process, sync_stats=False, through the case's steps on whole batches."""
    layer = LAYERS[case['layer']](C, **case['kwargs']).double()
    layer.load_state_dict(case['state'])
    layer.train(case['train'])
    if case['norm_eval']:
        layer.bn_member_mode.eval()
    seen = {'outputs': [], 'input_grads': [], 'param_grads': []}
    for x, weight in zip(inputs, weights):
        x = x.clone().requires_grad_(weight is not None)
        layer.zero_grad(set_to_none=True)
        y = layer(x)
        seen['outputs'].append(y.detach())
        if weight is not None:
            (y * weight).sum().backward()
            seen['input_grads'].append(x.grad)
            seen['param_grads'].append({name: p.grad for name, p in
                                        layer.named_parameters()})
    seen['buffers'] = dict(layer.named_buffers())
    return seen


@pytest.mark.parametrize('name', [case_name(*case) for case in TRAIN_CASES])
def test_two_processes_compute_what_one_computes_on_the_whole_batch(runs, name):
    cases, ranks = runs
    case = cases[name]
    expected = single_process(case, case['full_inputs'], case['full_weights'])
    one, two = (rank[name] for rank in ranks)
    for step in range(STEPS):
        for key in ('outputs', 'input_grads'):
            torch.testing.assert_close(torch.cat([one[key][step], two[key][step]]),
                                       expected[key][step], **TIGHT)
        # DDP averages the parameter gradients; the whole batch's loss is their sum.
        grads = one['param_grads'][step]
        assert grads.keys() == expected['param_grads'][step].keys()
        for name, grad in expected['param_grads'][step].items():
            assert grad.abs().max() > 1e-6, f'{name} gets no gradient: a vacuous check'
            torch.testing.assert_close(2 * grads[name], grad, **TIGHT, msg=name)
    # Every process folds the same statistics into its running ones.
    for name, buffer in expected['buffers'].items():
        assert torch.equal(one['buffers'][name], two['buffers'][name]), name
        torch.testing.assert_close(one['buffers'][name], buffer, **TIGHT)
    assert not one['warnings'] and not two['warnings']


@pytest.mark.parametrize('name', ['eval-without-running-stats', 'norm-eval',
                                  'group-of-one'])
def test_each_process_normalizes_alone_where_nothing_is_reduced(runs, name):
    cases, ranks = runs
    case = cases[name]
    for rank, seen in enumerate(ranks):
        expected = single_process(case, case['inputs'][rank], [None])
        assert torch.equal(seen[name]['outputs'][0], expected['outputs'][0])
        for buffer, value in expected['buffers'].items():
            assert torch.equal(seen[name]['buffers'][buffer], value), buffer
        warned = [w for w in seen[name]['warnings'] if 'sync_stats=True' in w]
        assert len(warned) == (name == 'group-of-one'), seen[name]['warnings']


def test_processes_with_different_image_sizes_weigh_every_value_the_same(runs):
    cases, ranks = runs
    values = torch.cat([x[0].transpose(0, 1).reshape(C, -1)
                        for x in cases['image-sizes']['inputs']], 1)
    for seen in ranks:
        buffers = seen['image-sizes']['buffers']
        torch.testing.assert_close(buffers['running_mean'], values.mean(1), **TIGHT)
        torch.testing.assert_close(buffers['running_var'], values.var(1), **TIGHT)


@pytest.mark.parametrize('layer, sync_layer', [('EN', SyncExemplarNorm2d),
                                               ('SN', SyncSwitchableNorm2d)])
def test_without_a_process_group_the_layer_is_en_or_sn_and_warns_once(monkeypatch, layer,
                                                                      sync_layer):
    monkeypatch.setattr(mixed_norm, '_warned_unsynchronized', False)
    plain = LAYERS[layer](C).double()
    synced = [sync_layer(C).double(), LAYERS[layer](C, sync_stats=True).double()]
    for module in synced:
        module.load_state_dict(plain.state_dict())
    x = batch(3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        for _ in range(2):
            outputs = []
            for module in [plain] + synced:
                x_ = x.clone().requires_grad_(True)
                y = module(x_)
                y.square().sum().backward()
                outputs.append((y, x_.grad))
            for y, grad in outputs[1:]:
                assert torch.equal(y, outputs[0][0]) and torch.equal(grad, outputs[0][1])
    warned = [str(w.message) for w in caught if 'sync_stats=True' in str(w.message)]
    assert len(warned) == 1, warned
    assert 'dist_train.sh' in warned[0] and 'sync_stats=False' in warned[0]
    for module in synced:
        assert torch.equal(module.running_mean, plain.running_mean)
        assert 'sync_stats=True' in repr(module)


@pytest.mark.parametrize('cls', [SyncExemplarNorm2d, SyncSwitchableNorm2d])
def test_docstring_examples_run(cls):
    import doctest
    runner = doctest.DocTestRunner()
    for test in doctest.DocTestFinder(recurse=False).find(cls, cls.__name__, globs={}):
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.attempted > 0 and results.failed == 0
