"""The package carries its configs and tools as OpenMMLab's toolboxes do (en_seg/.mim), so
``_base_ = 'en_seg::...'`` loads in a config anywhere: from the editable checkout, and
from a non-editable install built from these sources (marked slow: it compiles the
extension, about 1.5 minutes on 2 cores; ``-m 'not slow'`` leaves it out)."""
import os
import os.path as osp
import subprocess
import sys
from pathlib import Path

import pytest
from mmengine.config import Config

import en_seg

REPO = Path(__file__).resolve().parent.parent
EN_ADE = 'exemplar_norm/deeplabv3_r50-d8_en_8xb2-80k_ade20k-512x512.py'


def write_config(directory: Path) -> Path:
    """A user's config outside the checkout that inherits ours by package scope."""
    path = directory / 'my_deeplabv3_en.py'
    path.write_text(f"_base_ = 'en_seg::{EN_ADE}'\n"
                    'model = dict(decode_head=dict(num_classes=19))\n')
    return path


def test_the_editable_checkout_resolves_en_seg_configs_to_its_own_files(tmp_path):
    mim = Path(en_seg.__file__).parent / '.mim'
    assert (mim / 'configs').is_dir(), (
        f'{mim} is missing: install the checkout again (make install, or pip install '
        "--no-build-isolation -e .), setup.py links it there")
    cfg = Config.fromfile(str(write_config(tmp_path)))
    assert cfg.model.backbone.norm_cfg.type == 'EN'
    assert cfg.model.decode_head.num_classes == 19
    # Config.text names every file it read: ours through the link, and its relative base.
    assert str(mim / 'configs' / EN_ADE) in cfg.text
    assert str(mim / 'configs' / EN_ADE.replace('_en_', '_syncbn_')) in cfg.text
    assert osp.samefile(mim / 'configs' / EN_ADE, REPO / 'configs' / EN_ADE)


# Run with the installed copy alone on the path: cwd outside the checkout, PYTHONPATH the
# install (the venv's editable finder comes after it).
CHECK_INSTALL = """
import os.path as osp
import sys

import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import en_seg
from en_seg.models import ExemplarNorm2d
from en_seg.ops import EXTENSION_AVAILABLE, _C

site, config = sys.argv[1:]
package = osp.join(site, 'en_seg')
assert osp.dirname(en_seg.__file__) == package, en_seg.__file__
assert osp.dirname(_C.__file__) == osp.join(package, 'ops'), _C.__file__
assert EXTENSION_AVAILABLE
x = torch.randn(2, 8, 5, 5)
compiled = ExemplarNorm2d(8, reduction=4)
reference = ExemplarNorm2d(8, reduction=4, impl='reference')
reference.load_state_dict(compiled.state_dict())
torch.testing.assert_close(compiled(x), reference(x))

cfg = Config.fromfile(config)
assert osp.join(package, '.mim', 'configs', {en_ade!r}) in cfg.text
assert cfg.model.backbone.norm_cfg.type == 'EN'
init_default_scope(cfg.default_scope)
from mmseg.registry import MODELS
model = MODELS.build(cfg.model)
assert sum(isinstance(m, ExemplarNorm2d) for m in model.modules()) > 60
assert osp.isfile(osp.join(package, '.mim', 'tools', 'train.py'))
assert osp.isfile(osp.join(package, '.mim', 'model-index.yml'))
print('installed copy checked')
""".format(en_ade=EN_ADE)


def build_outputs_in_the_tree():
    """What an in-tree build would write, with modification times."""
    paths = [*REPO.glob('en_seg/ops/_C*.so'), *REPO.glob('build/*.*'),
             *REPO.glob('*.egg-info')]
    return {str(path): path.stat().st_mtime_ns for path in paths}


@pytest.mark.slow
def test_a_non_editable_install_loads_en_seg_configs_and_carries_the_tools(tmp_path):
    before = build_outputs_in_the_tree()
    build, site = tmp_path / 'build', tmp_path / 'site'
    build.mkdir()
    # setuptools reads its build directories from the file DIST_EXTRA_CONFIG names, so
    # the checkout's build/ and en_seg/ops/_C*.so stay as they are.
    (build / 'setup.cfg').write_text(
        f'[build]\nbuild_base = {build}\n[egg_info]\negg_base = {build}\n')
    install = subprocess.run(
        [sys.executable, '-m', 'pip', 'install', '--no-build-isolation', '--no-deps',
         '--disable-pip-version-check', '--target', str(site), str(REPO)],
        env=dict(os.environ, DIST_EXTRA_CONFIG=str(build / 'setup.cfg')),
        capture_output=True, text=True)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    assert build_outputs_in_the_tree() == before

    check = subprocess.run(
        [sys.executable, '-c', CHECK_INSTALL, str(site), str(write_config(tmp_path))],
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(site)),
        capture_output=True, text=True)
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
    assert 'installed copy checked' in check.stdout
