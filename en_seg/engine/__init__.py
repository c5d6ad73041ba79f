"""Run-time glue between our tools and mmengine's Runner."""
from .launch import prepare_launch

__all__ = ['prepare_launch']
