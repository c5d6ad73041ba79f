"""Loading a checkpoint never runs code, and mmseg's own tools and APIs load ours.

The crafted files are written by ``tests/malicious.py``; each would create a marker file
if any of its code ran. ``test_the_exec_chain_is_live`` shows that the worst of them does
run code when ``getattr`` is allow-listed as it is, so the refusals below are real.
"""
import argparse
import os.path as osp
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import mmseg
import pytest
import torch
from mmengine.logging import HistoryBuffer
from torch import nn
from mmengine.runner import Runner, load_checkpoint
from mmseg.apis import MMSegInferencer, inference_model, init_model

from en_seg.checkpoint import CheckpointError, load_from_local
from en_seg.utils.synthetic_data import write_ade20k_layout
from en_seg.utils.run_config import add_run_arguments, load_run_config
from isolated import run_isolated
from malicious import RESOURCE_FILES, marker_of, write_corpus, write_resource_corpus

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(REPO, 'configs/exemplar_norm/deeplabv3_r50-d8_en_8xb2-80k_ade20k-512x512.py')
MMSEG_TOOLS = osp.join(osp.dirname(mmseg.__file__), '.mim', 'tools')
#: The payloads every subprocess entry point is tried with: code reached through
#: getattr, and a plain __reduce__ calling os.system.
TOOL_PAYLOADS = ('getattr_chain_exec', 'reduce_os_system')


def small_run(data_root, max_iters=2):
    """--cfg-options that shrink the paper's config to a few CPU seconds."""
    options = ['model.pretrained=None', 'model.data_preprocessor.size=(64,64)',
               'train_cfg.max_iters=%d' % max_iters, 'default_hooks.checkpoint.interval=1',
               'default_hooks.logger.interval=1',
               'val_cfg=None', 'val_dataloader=None', 'val_evaluator=None',
               'train_dataloader.dataset.pipeline.2.scale=(128,96)',
               'train_dataloader.dataset.pipeline.3.crop_size=(64,64)',
               'test_dataloader.dataset.pipeline.1.scale=(128,96)']
    for split in ('train', 'test'):
        options += [f'{split}_dataloader.dataset.data_root={data_root}',
                    f'{split}_dataloader.num_workers=0',
                    f'{split}_dataloader.persistent_workers=False']
    return options


def run(args, check=True):
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True,
                            text=True, timeout=600)
    if check and result.returncode != 0:
        pytest.fail(f'{args} failed ({result.returncode}):\n{result.stdout[-3000:]}\n'
                    f'{result.stderr[-5000:]}')
    return result


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    return write_ade20k_layout(str(tmp_path_factory.mktemp('data') / 'ade'), num_train=2,
                               num_val=1, seed=0)


@pytest.fixture(scope='module')
def trained(tmp_path_factory, data_root):
    """The work dir of a 2-iteration run of our tools/train.py."""
    work = tmp_path_factory.mktemp('work') / 'run'
    run(['tools/train.py', CONFIG, '--work-dir', str(work), '--cfg-options',
         *small_run(data_root)])
    assert (work / 'iter_2.pth').is_file()
    return work


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp('malicious'))


@pytest.fixture(scope='module')
def model():
    return init_model(CONFIG, checkpoint=None, device='cpu')


@pytest.fixture(scope='module')
def runner(tmp_path_factory, data_root):
    """A Runner configured as our tools configure it: its ``load_checkpoint`` serves
    ``load_from`` and the test tools, its ``resume`` serves ``--resume``."""
    parser = argparse.ArgumentParser()
    parser.add_argument('config')
    add_run_arguments(parser)
    args = parser.parse_args([CONFIG, '--work-dir', str(tmp_path_factory.mktemp('runner')),
                              '--cfg-options', *small_run(data_root)])
    return Runner.from_cfg(load_run_config(args))


def assert_refused(error, path):
    message = str(error)
    assert str(path) in message and 'weights_only=False' not in message, message
    assert not marker_of(path).exists(), f'the payload of {path} ran'


def test_the_exec_chain_is_live(corpus):
    """Without en_seg, allow-listing getattr as it is lets the file run exec."""
    path = corpus['getattr_chain_exec']
    code = ('import torch; from mmengine.logging import HistoryBuffer\n'
            'with torch.serialization.safe_globals([getattr, HistoryBuffer]):\n'
            '    try: torch.load(%r)\n'
            '    except Exception: pass\n' % str(path))
    run(['-c', code])
    assert marker_of(path).exists()
    marker_of(path).unlink()


@pytest.mark.parametrize('name', [
    'getattr_chain_exec', 'getattr_globals', 'getattr_builtins', 'getattr_dunder_class',
    'rebuild_with_statistics_method', 'rebuild_with_eval', 'rebuild_with_history_buffer',
    'reduce_os_system',
    'reduce_subprocess_popen', 'reduce_builtins_exec', 'numpy_object_array',
    'numpy_ndarray_call', 'history_buffer_call', 'history_buffer_foreign_statistic',
    'history_buffer_extra_attribute', 'history_buffer_object_history', 'global_os_system',
    'global_posix_system', 'global_builtins_eval', 'global_builtins_exec',
    'global_subprocess_popen'])
def test_crafted_checkpoint_is_refused_by_every_python_entry_point(corpus, model, runner,
                                                                   name):
    path = corpus[name]
    statistics = dict(HistoryBuffer._statistics_methods)
    # torch's default is weights-only; a statistics method handed to a foreign object
    # fails in the call it makes (AttributeError), having done nothing.
    with pytest.raises((pickle.UnpicklingError, AttributeError)):
        torch.load(path)
    assert not marker_of(path).exists()
    for load in (lambda: load_checkpoint(model, str(path)),
                 lambda: runner.load_checkpoint(str(path)),
                 lambda: runner.resume(str(path)),
                 lambda: init_model(CONFIG, str(path), device='cpu'),
                 lambda: MMSegInferencer(model=CONFIG, weights=str(path), device='cpu')):
        with pytest.raises(CheckpointError) as error:
            load()
        assert_refused(error.value, path)
    assert HistoryBuffer._statistics_methods == statistics


def tool_commands(path, data_root, work):
    """Every command-line entry point, loading ``path``."""
    resume_dir = work / 'resume'
    resume_dir.mkdir(parents=True)
    (resume_dir / 'last_checkpoint').write_text(str(path))
    train = [CONFIG, '--cfg-options', *small_run(data_root, max_iters=3)]
    return {
        'tools/test.py': ['tools/test.py', CONFIG, str(path), '--work-dir',
                          str(work / 'test'), '--cfg-options', *small_run(data_root)],
        'tools/train.py load_from': ['tools/train.py', *train, f'load_from={path}',
                                     '--work-dir', str(work / 'load_from')],
        'tools/train.py --resume': ['tools/train.py', *train, '--resume', '--work-dir',
                                    str(resume_dir)],
        "mmseg's tools/test.py": [osp.join(MMSEG_TOOLS, 'test.py'), CONFIG, str(path),
                                  '--work-dir', str(work / 'mmseg_test'), '--cfg-options',
                                  *small_run(data_root)],
        "mmseg's tools/train.py --resume": [osp.join(MMSEG_TOOLS, 'train.py'), *train,
                                            '--resume', '--work-dir', str(resume_dir)],
    }


@pytest.mark.parametrize('name', TOOL_PAYLOADS)
def test_crafted_checkpoint_is_refused_by_every_tool(corpus, data_root, tmp_path, name):
    path = corpus[name]
    for tool, args in tool_commands(path, data_root, tmp_path).items():
        result = run(args, check=False)
        assert result.returncode != 0, tool
        assert_refused(result.stderr, path)
        if not tool.startswith('mmseg'):  # ours: one message, no traceback
            assert 'Traceback' not in result.stderr, (tool, result.stderr[-3000:])
            assert result.stderr.strip().splitlines()[-1].startswith(f'checkpoint {path}')


@pytest.mark.parametrize('content, reason', [
    (b'', 'the file is empty'),
    (b'not a checkpoint\n', 'not a file written by torch.save'),
    ('truncated', 'truncated or corrupted'),
    ('corrupted', 'truncated or corrupted'),
])
def test_unreadable_file_gets_one_clear_error(trained, model, tmp_path, content, reason):
    data = (trained / 'iter_2.pth').read_bytes()
    if content == 'truncated':
        content = data[:len(data) // 2]
    elif content == 'corrupted':  # the central directory's signature overwritten
        end = data.rindex(b'PK\x05\x06')
        content = data[:end] + b'XXXX' + data[end + 4:]
    path = tmp_path / 'bad.pth'
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=reason) as error:
        load_checkpoint(model, str(path))
    assert str(path) in str(error.value) and 'weights_only' not in str(error.value)


def test_our_checkpoint_loads_weights_only_as_plain_mmengine_objects(trained):
    checkpoint = torch.load(trained / 'iter_2.pth')
    assert checkpoint['meta']['iter'] == 2
    buffers = checkpoint['message_hub']['log_scalars']
    assert buffers and all(type(b) is HistoryBuffer for b in buffers.values())
    assert buffers['train/loss'].mean() > 0


def test_mmseg_apis_load_and_run_our_checkpoint(trained, data_root):
    image = next(Path(data_root, 'images', 'validation').glob('*.jpg'))
    segmentor = init_model(CONFIG, str(trained / 'iter_2.pth'), device='cpu')
    result = inference_model(segmentor, str(image))
    assert result.pred_sem_seg.data.shape[0] == 1
    inferencer = MMSegInferencer(model=CONFIG, weights=str(trained / 'iter_2.pth'),
                                 device='cpu')
    prediction = inferencer(str(image))['predictions']
    assert prediction.shape == result.pred_sem_seg.data.shape[1:]


def test_mmseg_test_tool_evaluates_our_checkpoint(trained, data_root, tmp_path):
    result = run([osp.join(MMSEG_TOOLS, 'test.py'), CONFIG, str(trained / 'iter_2.pth'),
                  '--work-dir', str(tmp_path), '--cfg-options', *small_run(data_root)])
    assert 'mIoU' in result.stdout + result.stderr


@pytest.mark.parametrize('train_tool', ['tools/train.py', osp.join(MMSEG_TOOLS, 'train.py')])
def test_resume_continues_from_the_saved_iteration(trained, data_root, tmp_path, train_tool):
    work = tmp_path / 'run'
    shutil.copytree(trained, work)
    (work / 'last_checkpoint').write_text(str(work / 'iter_2.pth'))
    result = run([train_tool, CONFIG, '--resume', '--work-dir', str(work), '--cfg-options',
                  *small_run(data_root, max_iters=3)])
    log = result.stdout + result.stderr
    assert 'resumed epoch: 0, iter: 2' in log, log[-3000:]
    assert 'Iter(train) [3/3]' in log and 'Iter(train) [1/3]' not in log
    assert (work / 'iter_3.pth').is_file()


@pytest.fixture(scope='module')
def resource_corpus(tmp_path_factory):
    return write_resource_corpus(tmp_path_factory.mktemp('resources'))


def test_a_numpy_dtype_set_twice_is_live_without_the_scan(resource_corpus):
    """torch's weights-only unpickler with our allow-list alone returns a HistoryBuffer
    whose array's dtype was checked, then given the REFCOUNT flag: the refusal below is
    of something real."""
    path = resource_corpus['dtype_set_twice']
    result = run([
        '-c', 'import en_seg, torch\n'
              f'buffer, dtype = torch.load({str(path)!r})["message_hub"]\n'
              'print(type(buffer).__name__, buffer._log_history.dtype.hasobject)'])
    assert result.stdout.split() == ['HistoryBuffer', 'True']


@pytest.mark.parametrize('name', sorted(RESOURCE_FILES))
def test_a_file_that_would_crash_or_exhaust_the_loader_gets_one_clear_error(
        resource_corpus, name):
    # In a forked child with 4 GiB more address space than it starts with: a crash, a hang
    # or a blown budget fails this test, not the test run.
    path = resource_corpus[name]

    def loads():
        messages = []
        for load in (lambda: load_from_local(str(path)),
                     lambda: load_checkpoint(nn.Conv2d(1, 1, 1), str(path))):
            try:
                load()
                messages.append('loaded')
            except CheckpointError as error:
                messages.append(str(error))
        return messages

    outcome = run_isolated(loads)
    assert outcome[0] == 'returned', outcome
    for message in outcome[1]:
        assert message.startswith(f'checkpoint {path} ') and RESOURCE_FILES[name] in message, \
            message


def test_a_huge_stride_zero_weight_loads_into_exemplar_norm_without_allocating(tmp_path):
    # A (2³¹,) weight over one stored float: plain data, a few bytes on disk. EN's
    # BatchNorm conversion repeated it into 24 GiB; now mmengine reports the size mismatch.
    from en_seg.models import ExemplarNorm2d
    path = tmp_path / 'stride0.pth'
    huge = torch.ones(1).expand(2 ** 31)
    torch.save({'state_dict': {'weight': huge, 'bias': huge}}, path)

    def load():
        load_checkpoint(ExemplarNorm2d(8), str(path))
        return 'loaded'

    assert run_isolated(load) == ('returned', 'loaded')


@pytest.mark.parametrize('make, reason', [
    (lambda path: path.mkdir(), 'cannot be read: it is a directory, not a file'),
    (lambda path: None, 'cannot be read: there is no such file'),
])
def test_a_directory_or_a_missing_file_gets_its_own_reason(tmp_path, make, reason):
    path = tmp_path / 'checkpoint.pth'
    make(path)
    with pytest.raises(CheckpointError, match=reason) as error:
        load_checkpoint(nn.Conv2d(1, 1, 1), str(path))
    assert str(error.value).startswith(f'checkpoint {path} ')


def test_safetensors_export_loads_wherever_a_checkpoint_does(trained, data_root, tmp_path):
    from mmengine.config import Config
    from mmseg.registry import MODELS
    from safetensors import safe_open
    checkpoint, out = trained / 'iter_2.pth', tmp_path / 'model.safetensors'
    run(['tools/export_safetensors.py', str(checkpoint), str(out)])
    saved = load_from_local(str(checkpoint))
    with safe_open(str(out), 'pt') as weights:  # weights and buffers only
        assert set(weights.keys()) == set(saved['state_dict'])
    image = str(next(Path(data_root, 'images', 'validation').glob('*.jpg')))
    expected = inference_model(init_model(CONFIG, str(checkpoint), device='cpu'), image)
    segmentor = init_model(CONFIG, str(out), device='cpu')
    assert segmentor.dataset_meta['classes'] == list(saved['meta']['dataset_meta']['classes'])
    torch.testing.assert_close(inference_model(segmentor, image).seg_logits.data,
                               expected.seg_logits.data)
    inferencer = MMSegInferencer(model=CONFIG, weights=str(out), device='cpu')
    assert inferencer(image)['predictions'].shape == expected.pred_sem_seg.data.shape[1:]
    # init_cfg=dict(type='Pretrained'), as a backbone's pre-trained weights come.
    cfg = Config.fromfile(CONFIG).model
    cfg.pretrained = None
    cfg.backbone.init_cfg = dict(type='Pretrained', checkpoint=str(out), prefix='backbone.')
    model = MODELS.build(cfg)
    model.init_weights()
    torch.testing.assert_close(model.backbone.stem[0].weight,
                               saved['state_dict']['backbone.stem.0.weight'])
    result = run(['tools/test.py', CONFIG, str(out), '--work-dir', str(tmp_path / 'test'),
                  '--cfg-options', *small_run(data_root)])
    assert 'mIoU' in result.stdout + result.stderr
    result = run(['tools/train.py', CONFIG, '--work-dir', str(tmp_path / 'train'),
                  '--cfg-options', *small_run(data_root, max_iters=1), f'load_from={out}'])
    assert f'Load checkpoint from {out}' in result.stdout + result.stderr


def test_a_counter_is_plain_data(tmp_path):
    # mmengine's epoch-based loops keep a collections.Counter in the checkpoint.
    from collections import Counter
    path = tmp_path / 'counter.pth'
    torch.save({'meta': {'seen': Counter(a=2, b=3)}}, path)
    assert load_from_local(str(path))['meta']['seen'] == Counter(a=2, b=3)
