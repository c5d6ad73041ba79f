"""Run-time glue between our tools and mmengine's Runner."""
from .config import add_run_arguments, load_run_config
from .launch import prepare_launch

__all__ = ['add_run_arguments', 'load_run_config', 'prepare_launch']
