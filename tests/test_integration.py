"""The real tools on tiny generated datasets: train, checkpoint, reload, evaluate."""
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def run(command, env=None, check=True):
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900,
                            env={**os.environ, 'PYTHON': sys.executable, **(env or {})})
    if check and result.returncode != 0:
        pytest.fail(f'{command} failed ({result.returncode}):\n{result.stdout[-4000:]}\n'
                    f'{result.stderr[-6000:]}')
    return result


def table_rows(output):
    """The rows of the metrics table printed by tools/test.py, by metric name."""
    rows = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip('|').split('|')]
        if len(cells) >= 2 and line.startswith('|'):
            rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.parametrize('dataset', ['ade20k', 'cityscapes'])
def test_train_then_single_and_multi_scale_test(tmp_path, dataset):
    result = run(['bash', 'tools/demo.sh'],
                 env=dict(DATASET=dataset, ITERS='2', ROOT=str(tmp_path)))
    work = tmp_path / 'work_dirs' / 'demo' / dataset
    assert (work / 'iter_2.pth').is_file()
    rows = table_rows(result.stdout)
    assert rows['metric (%)'] == ['single-scale', 'multi-scale+flip']
    for metric in ('aAcc', 'mIoU', 'mAcc'):
        values = [float(v) for v in rows[metric]]
        assert all(0 <= v <= 100 for v in values), rows[metric]
    per_class = [name for name in rows if name.startswith('IoU ')]
    absent = re.search(r'(\d+) of (\d+) classes are absent', result.stdout)
    listed = len(per_class) + (int(absent.group(1)) if absent else 0)
    assert listed == (150 if dataset == 'ade20k' else 19)
    # The synthetic scenes hold six classes; a few validation images show most of them.
    assert len(per_class) >= 3
    # The terminal gets progress and the table; the full logs go to the work dir.
    assert len(result.stdout.splitlines()) < 60, result.stdout
    test_log = (work / 'logs' / 'test.log').read_text()
    assert re.search(r'Load checkpoint from .*iter_2\.pth', test_log)
    for tag in ('ss', 'ms'):
        assert len(list((work / 'predictions' / tag).glob('*.png'))) == 4
        assert len(list((work / 'painted' / tag).rglob('*.png'))) == 4

    # A second run without --resume must not overwrite the first run's checkpoints.
    config = 'configs/exemplar_norm/deeplabv3_r50-d8_en_8xb2-80k_ade20k-512x512.py'
    again = run([sys.executable, 'tools/train.py', config, '--work-dir', str(work)],
                check=False)
    assert again.returncode != 0 and '--resume' in again.stderr + again.stdout
    assert (work / 'iter_2.pth').is_file()


def test_two_process_gloo_training_keeps_per_process_statistics(tmp_path):
    result = run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
                  '--master_port=29533', 'tests/dist_worker.py'],
                 env=dict(PYTHONPATH=REPO))
    assert 'per-process statistics, averaged gradients: OK' in result.stdout
    run(['bash', 'tools/demo.sh'],
        env=dict(DATASET='ade20k', ITERS='2', PROCS='2', ROOT=str(tmp_path), PORT='29534'))
    work = tmp_path / 'work_dirs' / 'demo' / 'ade20k'
    assert (work / 'iter_2.pth').is_file()
    log = (work / 'logs' / 'train.log').read_text()
    # mmengine's runtime summary; "GPU number" is its name for the world size.
    assert 'Distributed training: True' in log and 'GPU number: 2' in log


def test_amp_without_a_gpu_is_refused_with_a_clear_message(tmp_path):
    if torch.cuda.is_available():
        pytest.skip('this machine has a GPU, where --amp trains')
    config = 'configs/exemplar_norm/deeplabv3_r50-d8_en_8xb2-80k_ade20k-512x512.py'
    result = run([sys.executable, 'tools/train.py', config, '--amp', '--work-dir',
                  str(tmp_path)], check=False)
    assert result.returncode != 0 and 'Traceback' not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith('--amp needs a GPU')
