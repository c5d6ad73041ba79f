"""tools/benchmark.py and its package tools/benchmarking: one real run of the ``layer``
benchmark at a tiny size, whose table carries EN's ratios to GN and BN from that run, and
the rewrite of one section of a results file."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from en_seg.ops import EXTENSION_AVAILABLE

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not EXTENSION_AVAILABLE,
                                reason='the benchmark measures the compiled ops')


def test_layer_benchmark_prints_ratios_from_one_run_and_rewrites_its_section(tmp_path):
    doc = tmp_path / 'results.md'
    doc.write_text('# Results\n\nkept above\n\n<!-- layer-cpu:begin -->\nold table\n'
                   '<!-- layer-cpu:end -->\n\nkept below\n')
    command = [sys.executable, 'tools/benchmark.py', 'layer', '--device', 'cpu', '--threads',
               '1', '--repeats', '1', '--min-run-time', '0.01', '--shapes', '2,64,4,4',
               '--variants', 'BN', 'GN(32)', 'EN', '--doc', str(doc)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, 'KINETO_LOG_LEVEL': '5'})
    assert result.returncode == 0, result.stderr
    summary = re.search(r'^\| 1 \| \(2, 64, 4, 4\) \| float32, nchw \| ([\d.]+) \| ([\d.]+) '
                        r'\| ([\d.]+) \|', result.stdout, re.MULTILINE)
    assert summary, result.stdout
    assert all(float(ratio) > 0 for ratio in summary.groups())
    for layer in ('BN', 'GN(32)', 'EN'):
        assert re.search(rf'^\| 1 \| \(2, 64, 4, 4\) \| float32, nchw \| {re.escape(layer)} \|',
                         result.stdout, re.MULTILINE), layer
    text = doc.read_text()
    assert 'old table' not in text and summary.group(0) in text
    assert text.startswith('# Results\n\nkept above\n') and text.rstrip().endswith('kept below')


def test_passes_benchmark_sets_en_passes_against_group_norm_kernels(tmp_path):
    out = tmp_path / 'passes.md'
    command = [sys.executable, 'tools/benchmark.py', 'passes', '--device', 'cpu', '--threads',
               '1', '--repeats', '1', '--min-run-time', '0.01', '--shapes', '2,64,4,4',
               '--out', str(out)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = re.search(r'^\| 1 \| \(2, 64, 4, 4\) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) '
                        r'\| (-?\d+) \| (-?\d+) \|$', result.stdout, re.MULTILINE)
    steps = re.search(r'^\| 1 \| \(2, 64, 4, 4\)((?: \| \d+){6}) \|$', result.stdout,
                      re.MULTILINE)
    assert summary and steps, result.stdout
    assert all(float(ratio) > 0 for ratio in summary.groups()[:3])
    en, gn, en_fwd, en_bwd, gn_fwd, gn_bwd = (int(v) for v in steps.group(1).split('|')[1:])
    # Each column is the ratio (difference) of the steps printed beside it.
    assert int(summary.group(4)) == pytest.approx(en - en_fwd - en_bwd, abs=2)
    assert int(summary.group(5)) == pytest.approx(gn - gn_fwd - gn_bwd, abs=2)
    assert summary.group(0) in out.read_text()


def test_passes_benchmark_refuses_a_shape_group_norm_cannot_take():
    result = subprocess.run([sys.executable, 'tools/benchmark.py', 'passes', '--shapes',
                             '2,48,4,4'], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and 'divisible by 32' in result.stderr, result.stderr


@pytest.mark.skipif(shutil.which('valgrind') is None or shutil.which('callgrind_control') is None,
                    reason='counting instructions needs valgrind')
def test_instruction_counts_come_from_callgrind_runs_of_each_layer(tmp_path):
    out = tmp_path / 'counts.md'
    command = [sys.executable, 'tools/benchmark.py', 'instructions', '--shapes', '2,64,4,4',
               '--variants', 'BN', 'EN', '--steps', '3', '--out', str(out)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    row = re.search(r'^\| \(2, 64, 4, 4\) \| ([\d.]+) \| (\d+) \| (\d+) \|$', result.stdout,
                    re.MULTILINE)
    assert row, result.stdout
    ratio, bn, en = float(row.group(1)), int(row.group(2)), int(row.group(3))
    # Tens of thousands of instructions per step at least (Python, dispatch, autograd), and
    # the ratio is that of the counts.
    assert bn > 10 and en > 10 and abs(ratio - en / bn) < 0.01 + 0.01 * ratio
    assert row.group(0) in out.read_text()


def test_layer_benchmark_refuses_a_bad_shape_naming_the_form():
    result = subprocess.run([sys.executable, 'tools/benchmark.py', 'layer', '--shapes', '2,64'],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and 'N,C,H,W' in result.stderr, result.stderr


def test_flops_count_every_exemplar_norm_layer():
    # A trace records the layer op en_seg::exemplar_norm, not the ops it runs: without its
    # handle an EN layer counts 0 FLOPs and EN's model looked cheaper than BN's.
    pytest.importorskip('mmengine')
    from torch import nn

    from en_seg.models import ExemplarNorm2d
    sys.path.insert(0, str(REPO / 'tools'))
    try:
        from benchmarking.flops import gflops
    finally:
        sys.path.remove(str(REPO / 'tools'))
    size, c = 8, 64
    conv = nn.Conv2d(3, c, 1, bias=False)
    layer = ExemplarNorm2d(c)
    k, hidden = layer.num_normalizers, layer.pi * layer.num_normalizers
    expected = (5 * c * size * size                                 # moments, affine map
                + k * c + hidden * k * k + k * hidden + 2 * k * c)  # coefficients
    with_en = gflops(nn.Sequential(conv, layer), size, 'cpu')
    assert with_en * 1e9 == pytest.approx(gflops(conv, size, 'cpu') * 1e9 + expected)


def test_roofline_table_sets_each_step_against_the_model_and_the_peak():
    sys.path.insert(0, str(REPO / 'tools'))
    try:
        from benchmarking import roofline
    finally:
        sys.path.remove(str(REPO / 'tools'))
    assert roofline.peak_bandwidth('NVIDIA H100 80GB HBM3') == 3.35e12
    assert roofline.peak_bandwidth('NVIDIA H100 PCIe') == 2.0e12
    assert roofline.peak_bandwidth('NVIDIA H200') == 4.8e12
    assert roofline.peak_bandwidth('Some GPU') is None
    moved = 8 * 2 * 256 * 128 * 128 * 4  # 268 MB: docs/cuda_sass.md's 89 µs + 6 µs at 3 TB/s
    case = roofline.RooflineCase((2, 256, 128, 128), 'float32', 'nchw', moved,
                                 {'EN': 110e-6, 'BN': 100e-6})
    row = roofline.markdown([case], 3.0e12, 'NVIDIA H100 80GB HBM3', 'header').splitlines()[-1]
    cells = [cell.strip() for cell in row.strip('|').split('|')]
    assert cells[3:] == ['268.4', '110.0', '95.5', '1.15', '73%', '100.0', '1.10'], row
    row = roofline.markdown([case], 3.0e12, 'Some GPU', 'header').splitlines()[-1]
    assert row.split('|')[8].strip() == '-'
