"""Install en-seg. Build dependencies (torch) must already be installed: use
``pip install --no-build-isolation -e .`` (the Makefile does).

Builds the extension ``en_seg.ops._C`` (the compiled ops, en_seg/ops/csrc): its C++ CPU
kernels always, its CUDA kernels (en_seg/ops/csrc/cuda) when torch was built with CUDA
and ``nvcc`` is found, or when ``FORCE_CUDA=1``. ``TORCH_CUDA_ARCH_LIST`` (e.g.
``"8.0 9.0"``) selects the GPU architectures, as for any torch extension; without it
torch builds for the visible GPUs, and on a machine without one this file sets
:data:`DEFAULT_CUDA_ARCHS`. The CUDA toolkit is ``CUDA_HOME`` (or ``CUDA_PATH``) when set,
else the one the ``nvcc`` on the PATH reports, so that a wrapper script named nvcc works.

The package also carries configs/, tools/ and model-index.yml as en_seg/.mim/, as
OpenMMLab's toolboxes do (:data:`MIM_FILES`).
"""
import glob
import os
import re
import shutil
import subprocess
import sys

import torch
from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

#: GPU architectures of a CUDA build without TORCH_CUDA_ARCH_LIST and without a visible
#: GPU: binaries for A100 (sm_80) and H100 / H200 (sm_90), and PTX that newer GPUs compile.
DEFAULT_CUDA_ARCHS = '8.0 9.0+PTX'


def _toolkit_of_nvcc():
    """The CUDA toolkit directory of the ``nvcc`` on the PATH, or None without one.

    torch guesses it as nvcc's parent directory, which is wrong when nvcc is a wrapper
    script (e.g. /usr/local/bin/nvcc running /usr/local/cuda-13.0/bin/nvcc). nvcc itself
    prints its toolkit as ``#$ TOP=...`` in a dry run, which compiles nothing.
    """
    nvcc = shutil.which('nvcc')
    if nvcc is None:
        return None
    dry_run = subprocess.run([nvcc, '--dryrun', '-c', 'probe.cu'],
                             capture_output=True, text=True)
    top = re.search(r'^#\$ TOP=(.*)$', dry_run.stderr + dry_run.stdout, re.MULTILINE)
    return os.path.realpath(top.group(1).strip()) if top else None


def _configure_cuda():
    """Point torch's extension build at the toolkit and the architectures (environment
    variables it reads when torch.utils.cpp_extension is imported and when it compiles)."""
    if not (os.environ.get('CUDA_HOME') or os.environ.get('CUDA_PATH')):
        toolkit = _toolkit_of_nvcc()
        if toolkit:
            os.environ['CUDA_HOME'] = toolkit
    # Without a GPU torch would take the architectures of none (an IndexError).
    if not os.environ.get('TORCH_CUDA_ARCH_LIST') and torch.cuda.device_count() == 0:
        os.environ['TORCH_CUDA_ARCH_LIST'] = DEFAULT_CUDA_ARCHS


if torch.version.cuda is not None:
    _configure_cuda()
from torch.utils.cpp_extension import (  # noqa: E402  (reads CUDA_HOME when imported)
    CUDA_HOME, BuildExtension, CppExtension, CUDAExtension)

CSRC = os.path.join('en_seg', 'ops', 'csrc')


def _build_cuda() -> bool:
    """CUDA kernels need a CUDA torch to link against and nvcc to compile them."""
    if os.environ.get('FORCE_CUDA', '0') == '1':
        return True
    return (torch.version.cuda is not None and CUDA_HOME is not None
            and os.path.exists(os.path.join(CUDA_HOME, 'bin', 'nvcc')))


def _extension():
    sources = sorted(glob.glob(os.path.join(CSRC, '*.cpp')))
    # at::parallel_for runs serially unless the including file is built with OpenMP;
    # libtorch on Linux ships and loads the same libgomp.
    openmp = ['-fopenmp'] if sys.platform.startswith('linux') else []
    # -fno-trapping-math and -fno-math-errno, as torch's own build: no kernel reads
    # floating-point exception flags or errno. Without the first GCC will not vectorize
    # loops with a select, such as the ratio op's tanh (csrc/ratio_math.h); without the
    # second every sqrt is a scalar instruction with a branch to libm's errno path, so
    # loops of 1 / sqrt(var + eps) run one value at a time. Results are unchanged: sqrt and
    # division are correctly rounded either way.
    cxx_flags = ['-O3', '-fno-trapping-math', '-fno-math-errno'] + openmp
    if not _build_cuda():
        return CppExtension('en_seg.ops._C', sources,
                            extra_compile_args={'cxx': cxx_flags}, extra_link_args=openmp)
    sources += sorted(glob.glob(os.path.join(CSRC, 'cuda', '*.cpp')))
    sources += sorted(glob.glob(os.path.join(CSRC, 'cuda', '*.cu')))
    return CUDAExtension('en_seg.ops._C', sources,
                         extra_compile_args={'cxx': cxx_flags, 'nvcc': ['-O3']},
                         extra_link_args=openmp)


#: Carried by the package under en_seg/.mim/, OpenMMLab's layout: mmengine resolves the
#: config path ``en_seg::<path>`` to en_seg/.mim/configs/<path> (en_seg/config_scope.py)
#: after reading en_seg/.mim/model-index.yml, and the tools run from there as mmseg's do.
MIM_FILES = ('configs', 'tools', 'model-index.yml')


def _place_mim_files(mim_dir: str, link: bool) -> None:
    """Put :data:`MIM_FILES` into ``mim_dir``: relative symbolic links or copies."""
    os.makedirs(mim_dir, exist_ok=True)
    for name in MIM_FILES:
        target = os.path.join(mim_dir, name)
        if os.path.islink(target) or os.path.isfile(target):
            os.remove(target)
        elif os.path.isdir(target):
            shutil.rmtree(target)
        if link:
            os.symlink(os.path.relpath(name, mim_dir), target)
        elif os.path.isdir(name):
            shutil.copytree(name, target,
                            ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
        else:
            shutil.copyfile(name, target)


class BuildPyWithMim(build_py):
    """setuptools' build_py, plus :data:`MIM_FILES` under en_seg/.mim.

    A wheel (``pip install .``) gets copies. An editable install imports en_seg from the
    checkout, so there en_seg/.mim holds links to the originals (ignored by git), and
    ``en_seg::`` loads a config as it is edited.
    """

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            _place_mim_files(os.path.join('en_seg', '.mim'), link=True)
        else:
            _place_mim_files(os.path.join(self.build_lib, 'en_seg', '.mim'), link=False)


setup(
    name='en-seg',
    version='0.1.0',
    description='Exemplar Normalization (CVPR 2020) as a plug-in for mmsegmentation',
    packages=find_packages(include=['en_seg', 'en_seg.*']),
    python_requires='>=3.9',
    install_requires=['torch>=2.6', 'mmengine==0.10.7', 'mmcv==2.1.0',
                      'mmsegmentation==1.2.2', 'matplotlib', 'scikit-learn', 'safetensors'],
    # Optional: ImageNet pre-training of the backbones with mmpretrain
    # (configs/exemplar_norm/resnet50-v1c_*_in1k.py), and ONNX export with an onnxruntime
    # check (tools/export_onnx.py; onnxscript is what torch's dynamo exporter needs).
    extras_require={
        # mmpretrain imports torchvision without requiring it.
        'pretrain': ['mmpretrain==1.2.0', 'torchvision'],
        'onnx': ['onnx>=1.16', 'onnxruntime>=1.18', 'onnxscript>=0.2'],
    },
    ext_modules=[_extension()],
    cmdclass={'build_ext': BuildExtension, 'build_py': BuildPyWithMim},
)
