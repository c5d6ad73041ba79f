"""The ratio analysis: collection, class weighting, figures, training hook, CLI.

Known ratios come from the ratio branch itself: with ``ratio_fc2.weight`` zero the last
layer outputs its bias whatever the input, so every image's λ is softmax(bias).
"""
import csv
import importlib.util
import json
import os.path as osp
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest
import torch
from mmengine.logging import MessageHub
from mmengine.model import BaseModel
from mmengine.runner import Runner
from PIL import Image
from torch import nn

from en_seg.analysis.figures import tsne_embedding
from en_seg.analysis.ratio_table import (RatioTable, class_pixel_shares, class_weighted_means,
                                         dominant_classes)
from en_seg.analysis.recording import RatioRecorder
from en_seg.analysis.report import (choose_classes, choose_images, write_dynamics_report,
                                    write_report)
from en_seg.engine.hooks import ENRatioLoggerHook
from en_seg.models import ExemplarNorm2d

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def fix_ratios(layer: ExemplarNorm2d, logits) -> torch.Tensor:
    """Make ``layer`` output softmax(logits) for every sample; return those ratios."""
    with torch.no_grad():
        layer.ratio_fc2.weight.zero_()
        layer.ratio_fc2.bias.copy_(torch.tensor(logits))
    return torch.softmax(torch.tensor(logits, dtype=torch.float32), 0)


def tiny_network() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), ExemplarNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1),
                         ExemplarNorm2d(16, normalizers=('IN', 'BN')))


def assert_valid_figures(paths):
    """Every path exists; PNGs decode, SVGs parse as XML with an <svg> root."""
    assert paths, 'no figure written'
    for path in paths:
        if path.endswith('.png'):
            with Image.open(path) as image:
                image.load()
                assert image.format == 'PNG' and min(image.size) > 50
        else:
            assert path.endswith('.svg')
            assert ElementTree.parse(path).getroot().tag.endswith('svg')


# Recording ------------------------------------------------------------------------------

def test_recorder_returns_the_known_ratios_of_every_layer_by_model_name():
    model = tiny_network().eval()
    expected = {'1': fix_ratios(model[1], [2.0, 0.0, -1.0]),
                '4': fix_ratios(model[4], [0.5, 1.5])}
    with RatioRecorder(model) as recorder:
        model(torch.randn(3, 3, 8, 8))
        ratios = recorder.pop()
        assert recorder.normalizers == {'1': ('IN', 'LN', 'BN'), '4': ('IN', 'BN')}
    assert list(ratios) == ['1', '4']  # the order in which the layers ran
    for name, value in ratios.items():
        assert value.shape == (3, len(expected[name])) and value.dtype == torch.float32
        torch.testing.assert_close(value, expected[name].expand(3, -1))


def test_recorder_averages_repeated_runs_and_forgets_after_pop_and_exit():
    model = tiny_network().train()
    runs = []
    with RatioRecorder(model) as recorder:
        for _ in range(2):  # e.g. two crops of sliding-window inference
            model(torch.randn(2, 3, 8, 8))
            runs.append(model[1].last_ratios.clone())
        ratios = recorder.pop()
        assert recorder.pop() == {}
    torch.testing.assert_close(ratios['1'], (runs[0] + runs[1]) / 2)
    model(torch.randn(2, 3, 8, 8))  # hooks removed: nothing is recorded any more
    assert recorder.pop() == {}


def test_recorder_rejects_mismatched_batch_sizes():
    model = tiny_network()
    with RatioRecorder(model) as recorder:
        model(torch.randn(2, 3, 8, 8))
        model(torch.randn(3, 3, 8, 8))
        with pytest.raises(RuntimeError, match='batches of sizes'):
            recorder.pop()


def test_model_without_en_layers_is_rejected_naming_the_fix():
    with pytest.raises(ValueError, match=r"norm_cfg=dict\(type='EN'\)"):
        RatioRecorder(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)))


# Class weighting ------------------------------------------------------------------------

def test_pixel_shares_of_a_hand_made_label_map_leave_out_ignored_pixels():
    label = torch.tensor([[0, 0, 0, 255],
                          [0, 0, 0, 255],
                          [1, 1, 2, 255],
                          [2, 2, 2, 255]], dtype=torch.uint8)[None]  # mmseg's (1, H, W)
    shares = class_pixel_shares(label, num_classes=4)
    np.testing.assert_allclose(shares, [6 / 12, 2 / 12, 4 / 12, 0])
    assert shares.dtype == np.float64
    np.testing.assert_array_equal(class_pixel_shares(np.full((3, 3), 255), 4), np.zeros(4))
    with pytest.raises(ValueError, match=r'label\(s\) \[7\].*reduce_zero_label'):
        class_pixel_shares(np.array([[0, 7]]), num_classes=4)


def test_class_means_weight_each_image_by_its_pixel_share():
    ratios = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    shares = np.array([[0.75, 0.25, 0.0],
                       [0.25, 0.75, 0.0],
                       [0.0, 0.0, 0.0]])  # the third image has no labelled pixel
    means = class_weighted_means(ratios, shares)
    np.testing.assert_allclose(means[0], [0.75, 0.25])   # (0.75·[1,0] + 0.25·[0,1]) / 1
    np.testing.assert_allclose(means[1], [0.25, 0.75])
    assert np.isnan(means[2]).all()                       # no image has class 2
    np.testing.assert_array_equal(dominant_classes(shares), [0, 1, -1])


def make_table(num_images=6, seed=0) -> RatioTable:
    """Random but valid ratios of three layers, one of them with a two-normalizer pool."""
    rng = np.random.default_rng(seed)
    normalizers = (('IN', 'LN', 'BN'), ('IN', 'LN', 'BN'), ('IN', 'BN'))
    ratios = tuple(rng.dirichlet(np.ones(len(n)), num_images).astype(np.float32)
                   for n in normalizers)
    shares = rng.dirichlet(np.ones(3), num_images) * (rng.random((num_images, 3)) > 0.3)
    shares[:, 2] = 0  # 'car' is in no image
    shares = shares / np.maximum(shares.sum(1, keepdims=True), 1e-12)
    return RatioTable(images=tuple(f'img_{i}' for i in range(num_images)),
                      layers=('backbone.bn1', 'backbone.layer1.0.bn1', 'decode_head.bn'),
                      normalizers=normalizers, ratios=ratios,
                      class_names=('sky', 'road', 'car'), pixel_shares=shares)


def test_table_class_means_match_the_weighted_mean_per_layer():
    table = make_table()
    weights = table.pixel_shares[:, 1]
    for layer_ratios, mean in zip(table.ratios, table.class_means(1)):
        np.testing.assert_allclose(mean, weights @ layer_ratios / weights.sum(), rtol=1e-6)


# Choices --------------------------------------------------------------------------------

def test_unknown_or_absent_classes_and_unknown_images_are_rejected():
    table = make_table()
    with pytest.raises(ValueError, match=r"unknown class 'skye'; did you mean \['sky'\]"):
        choose_classes(table, ['skye'])
    with pytest.raises(ValueError, match="'car' has no labelled pixel"):
        choose_classes(table, ['car'])
    with pytest.raises(ValueError, match="unknown image 'img_9'"):
        choose_images(table, ['img_9'])
    assert choose_classes(table, ['road', 'sky']) == [1, 0]
    assert 2 not in choose_classes(table)  # absent classes are never chosen by default
    assert choose_images(table) == [0, 2, 3, 5]


# t-SNE ----------------------------------------------------------------------------------

def test_tsne_gives_one_point_per_image_and_survives_identical_ratios():
    embedding = tsne_embedding(make_table(num_images=8).features())
    assert embedding.shape == (8, 2) and np.isfinite(embedding).all()
    np.testing.assert_array_equal(tsne_embedding(np.ones((5, 6))), np.zeros((5, 2)))
    with pytest.raises(ValueError, match='perplexity'):
        tsne_embedding(np.random.rand(4, 3), perplexity=4)


# Report ---------------------------------------------------------------------------------

def read_ratio_csv(path):
    with open(path, newline='') as file:
        rows = list(csv.DictReader(file))
    return {(row['image'], row['layer'], row['normalizer']): float(row['ratio'])
            for row in rows}, len(rows)


def test_report_writes_the_tidy_table_summary_and_every_figure(tmp_path):
    table = make_table()
    outputs = write_report(table, str(tmp_path), classes=['road'], images=['img_1'],
                           meta=dict(split='val'))
    assert set(outputs) == {'table', 'summary', 'layer_means', 'class_means',
                            'image_ratios', 'tsne'}
    assert_valid_figures([path for kind, paths in outputs.items()
                          if kind not in ('table', 'summary') for path in paths])
    ratios, num_rows = read_ratio_csv(outputs['table'][0])
    assert num_rows == 6 * (3 + 3 + 2)
    for layer, names, values in zip(table.layers, table.normalizers, table.ratios):
        for i, image in enumerate(table.images):
            for k, name in enumerate(names):
                assert ratios[image, layer, name] == pytest.approx(values[i, k], abs=1e-7)
    with open(outputs['summary'][0]) as file:
        summary = json.load(file)
    assert summary['split'] == 'val' and summary['num_images'] == 6
    assert [layer['name'] for layer in summary['layers']] == list(table.layers)
    assert list(summary['classes']) == ['road'] and list(summary['images']) == ['img_1']
    assert summary['classes']['road']['layers']['decode_head.bn']['BN'] == pytest.approx(
        table.class_means(1)[2][1])


# Training dynamics ----------------------------------------------------------------------

class TinyModel(BaseModel):
    """An mmengine model around :func:`tiny_network`, trained to shrink its output."""

    def __init__(self):
        super().__init__()
        self.net = tiny_network()

    def forward(self, inputs, data_samples=None, mode='loss'):
        return dict(loss=self.net(inputs).square().mean())


class TinyDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        generator = torch.Generator().manual_seed(index)
        return dict(inputs=torch.randn(3, 8, 8, generator=generator))


def test_hook_logs_every_layer_ratios_into_the_scalars_of_a_training_run(tmp_path):
    model = TinyModel()
    expected = {'net.1': fix_ratios(model.net[1], [1.0, 0.0, -1.0]),
                'net.4': fix_ratios(model.net[4], [0.0, 2.0])}
    runner = Runner(
        model=model, work_dir=str(tmp_path / 'run'),
        train_dataloader=dict(dataset=TinyDataset(), batch_size=2, num_workers=0,
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              collate_fn=dict(type='default_collate')),
        # lr 0 keeps the fixed ratios through the optimizer steps.
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.0)),
        train_cfg=dict(by_epoch=False, max_iters=2),
        default_hooks=dict(logger=dict(type='LoggerHook', interval=1),
                           checkpoint=dict(type='CheckpointHook', interval=100)),
        custom_hooks=[dict(type='ENRatioLoggerHook', interval=1)],
        default_scope='mmengine')
    runner.train()
    (scalars,) = tmp_path.glob('run/*/vis_data/scalars.json')
    records = [record for record in map(json.loads, scalars.read_text().splitlines())
               if any(key.startswith('en_ratio/') for key in record)]
    assert [record['step'] for record in records] == [1, 2]
    for record in records:
        for layer, ratios in expected.items():
            names = ('IN', 'LN', 'BN') if layer == 'net.1' else ('IN', 'BN')
            for name, value in zip(names, ratios.tolist()):
                assert record[f'en_ratio/{layer}/{name}'] == pytest.approx(value, abs=1e-6)
    (text_log,) = tmp_path.glob('run/*/*.log')
    assert 'en_ratio/net.4/BN' in text_log.read_text()
    outputs = write_dynamics_report(str(tmp_path / 'run'), str(tmp_path / 'figures'))
    assert_valid_figures(outputs['dynamics'])


def test_hook_rejects_a_bad_interval():
    with pytest.raises(ValueError, match='interval'):
        ENRatioLoggerHook(interval=0)


# Command line on an mmseg model ---------------------------------------------------------

CONFIG = """
custom_imports = dict(imports=['en_seg'], allow_failed_imports=False)
default_scope = 'mmseg'
norm_cfg = {norm}
model = dict(
    type='EncoderDecoder',
    data_preprocessor=dict(type='SegDataPreProcessor', mean=[128.0] * 3, std=[64.0] * 3,
                           bgr_to_rgb=True, pad_val=0, seg_pad_val=255),
    backbone=dict(type='ResNet', depth=18, num_stages=2, stem_channels=8,
                  base_channels=8, strides=(1, 2), dilations=(1, 1), out_indices=(1, ),
                  norm_cfg=norm_cfg),
    decode_head=dict(type='FCNHead', in_channels=16, in_index=0, channels=8, num_convs=1,
                     concat_input=False, num_classes=3, norm_cfg=norm_cfg,
                     loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0)),
    test_cfg=dict(mode='whole'))
val_dataloader = dict(
    batch_size=4, num_workers=0,  # the analysis runs one image at a time regardless
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='BaseSegDataset', data_root={root!r},
                 metainfo=dict(classes=('sky', 'road', 'car'),
                               palette=[[0, 0, 255], [128, 128, 128], [255, 0, 0]]),
                 data_prefix=dict(img_path='img', seg_map_path='ann'),
                 img_suffix='.png', seg_map_suffix='.png',
                 pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                           dict(type='PackSegInputs')]))
"""


def load_tool():
    spec = importlib.util.spec_from_file_location(
        'analyze_ratios', osp.join(ROOT, 'tools', 'analyze_ratios.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def write_dataset(root):
    """Three 32x32 images; label maps of sky (top), road (bottom), car, ignored pixels."""
    (root / 'img').mkdir(parents=True)
    (root / 'ann').mkdir()
    labels = np.zeros((3, 32, 32), np.uint8)
    labels[:, 16:] = 1
    labels[1, :4, :4] = 2     # image 1 has a car of 16 pixels
    labels[2, :8] = 255       # image 2: the top quarter, sky, is ignored
    rng = np.random.default_rng(0)
    for i, label in enumerate(labels):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
            root / 'img' / f'scene_{i}.png')
        Image.fromarray(label).save(root / 'ann' / f'scene_{i}.png')


def write_config(tmp_path, norm="dict(type='EN', pi=4)", name='en'):
    config = tmp_path / f'config_{name}.py'
    config.write_text(CONFIG.format(root=str(tmp_path / 'data'), norm=norm))
    return config


def build_model(config):
    """The config's model, built as mmseg's init_model does; the checkpoint path of a
    run of tools/train.py is simulated by :func:`save_checkpoint`."""
    from mmengine.config import Config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    register_all_modules()
    return MODELS.build(Config.fromfile(str(config)).model)


def save_checkpoint(model, path):
    """Save as mmengine's Runner does: meta and message hub state (numpy inside) beside
    the weights, which torch.load(weights_only=True) refuses unless allow-listed."""
    hub = MessageHub.get_instance('analysis-test')
    hub.update_scalar('train/loss', 1.0)
    torch.save(dict(meta=dict(iter=2, seed=0, dataset_meta=dict(classes=('sky', 'road',
                                                                          'car'))),
                    state_dict=model.state_dict(), message_hub=hub.state_dict()), path)


def test_collect_command_on_an_mmseg_checkpoint_reports_the_known_ratios(tmp_path):
    pytest.importorskip('mmseg')
    write_dataset(tmp_path / 'data')
    config = write_config(tmp_path)
    model = build_model(config)
    layers = [(name, m) for name, m in model.named_modules()
              if isinstance(m, ExemplarNorm2d)]
    expected = {name: fix_ratios(m, [0.1 * j, 0.0, -0.2 * j])
                for j, (name, m) in enumerate(layers)}
    checkpoint = tmp_path / 'iter_2.pth'
    save_checkpoint(model, checkpoint)

    out = tmp_path / 'analysis'
    outputs = load_tool().main(['collect', str(config), str(checkpoint), '--out', str(out),
                                '--classes', 'road', 'car', '--images', 'scene_2',
                                '--device', 'cpu'])

    ratios, num_rows = read_ratio_csv(out / 'ratios.csv')
    assert num_rows == 3 * 3 * len(layers)
    for name, value in expected.items():
        for image in ('scene_0', 'scene_1', 'scene_2'):
            for k, normalizer in enumerate(('IN', 'LN', 'BN')):
                assert ratios[image, name, normalizer] == pytest.approx(
                    value[k].item(), abs=1e-6)
    with open(out / 'pixel_shares.csv', newline='') as file:
        shares = {(row['image'], row['class']): float(row['share'])
                  for row in csv.DictReader(file)}
    assert shares[('scene_1', 'car')] == pytest.approx(16 / 1024)
    assert shares[('scene_2', 'sky')] == pytest.approx(256 / 768)  # not 512 / 1024
    assert ('scene_0', 'car') not in shares
    summary = json.loads((out / 'summary.json').read_text())
    assert [layer['name'] for layer in summary['layers']] == [name for name, _ in layers]
    assert summary['dataset'] == 'BaseSegDataset' and summary['num_images'] == 3
    assert_valid_figures([path for kind, paths in outputs.items()
                          if kind not in ('table', 'summary') for path in paths])


def test_collect_command_rejects_a_batchnorm_checkpoint(tmp_path):
    """EN loads BatchNorm weights (docs/method.md#loading-a-batchnorm-checkpoint), so only
    the missing ratio branch tells."""
    pytest.importorskip('mmseg')
    write_dataset(tmp_path / 'data')
    config = write_config(tmp_path)
    checkpoint = tmp_path / 'bn.pth'
    bn_model = build_model(write_config(tmp_path, "dict(type='BN')", 'bn'))
    save_checkpoint(bn_model, checkpoint)
    with pytest.raises(ValueError, match='holds no EN layer'):
        load_tool().main(['collect', str(config), str(checkpoint), '--out',
                          str(tmp_path / 'out'), '--device', 'cpu'])


@pytest.mark.parametrize('choice, message', [
    (['--classes', 'roads'], r"unknown class 'roads'; did you mean \['road'\]"),
    (['--images', 'scene_7'], r"unknown image 'scene_7'; did you mean"),
])
def test_collect_command_rejects_unknown_choices_before_the_run(tmp_path, choice, message):
    pytest.importorskip('mmseg')
    write_dataset(tmp_path / 'data')
    config = write_config(tmp_path)
    checkpoint = tmp_path / 'iter_2.pth'
    save_checkpoint(build_model(config), checkpoint)
    out = tmp_path / 'out'
    with pytest.raises(ValueError, match=message):
        load_tool().main(['collect', str(config), str(checkpoint), '--out', str(out),
                          '--device', 'cpu'] + choice)
    assert not out.exists()  # nothing was collected or written
