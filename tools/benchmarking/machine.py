"""The line that names what the numbers were measured on."""
import os
import platform

import torch


#: What each measure is, as the line names it.
MEASURES = {'wall': 'wall clock', 'cpu': 'cpu clock',
            'callgrind': 'instructions counted by callgrind'}


def describe(device: str, clock: str) -> str:
    """torch's version, and the GPU's name, or the CPU's model with its logical CPUs and the
    measure (a :data:`MEASURES` key), e.g. 'torch 2.13.0+cpu, Intel(R) Xeon(R) Processor (2
    logical CPUs), wall clock'."""
    if device == 'cuda':
        where = torch.cuda.get_device_name()
    else:
        where = f'{cpu_model()} ({os.cpu_count()} logical CPUs), {MEASURES[clock]}'
    return f'torch {torch.__version__}, {where}'


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what :mod:`platform` knows."""
    try:
        with open('/proc/cpuinfo') as cpuinfo:
            for line in cpuinfo:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
