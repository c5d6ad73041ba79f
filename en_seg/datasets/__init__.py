"""Small synthetic datasets written in the real ADE20K and Cityscapes directory layouts."""
from .synthetic import write_ade20k_layout, write_cityscapes_layout

__all__ = ['write_ade20k_layout', 'write_cityscapes_layout']
