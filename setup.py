"""Install en-seg. Build dependencies (torch) must already be installed: use
``pip install --no-build-isolation -e .`` (the Makefile does)."""
from setuptools import find_packages, setup

setup(
    name='en-seg',
    version='0.1.0',
    description='Exemplar Normalization (CVPR 2020) as a plug-in for mmsegmentation',
    packages=find_packages(include=['en_seg', 'en_seg.*']),
    python_requires='>=3.9',
    install_requires=['torch>=2.1', 'mmengine==0.10.7', 'mmcv==2.1.0',
                      'mmsegmentation==1.2.2'],
)
