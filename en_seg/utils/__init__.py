"""Helpers of the tools and tests, one module each, re-exporting nothing; they may import
mmengine, torch and cv2 (and onnxruntime, in :mod:`.onnx_export`), never another en_seg
package.

- :mod:`.run_config`: the command-line options and config handling of tools/train.py and
  tools/test.py.
- :mod:`.norm_cfg_check`: every ``norm_cfg`` type of a config's model checked against the
  registered norm layers, before the model is built.
- :mod:`.launch`: distributed launch on machines with or without CUDA.
- :mod:`.synthetic_data`: tiny datasets in the real ADE20K and Cityscapes layouts, for
  ``make demo`` and the tests.
- :mod:`.synthetic_imagenet`: a tiny dataset in the real ImageNet layout, for the
  pre-training tests.
- :mod:`.onnx_export`: a segmentor's logits exported to ONNX and run by onnxruntime, for
  tools/export_onnx.py and the tests.
"""
