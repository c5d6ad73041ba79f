"""The benchmarks behind tools/benchmark.py, one job per module.

- :mod:`.timing`: the median time of a step, the lowest median over measuring rounds;
- :mod:`.memory`: the peak tensor memory a step allocates;
- :mod:`.instructions`: the instructions of a layer's step, counted by callgrind;
- :mod:`.process`: this process's settings for steady timings (denormals, glibc malloc);
- :mod:`.machine`: the line that names what the numbers were measured on;
- :mod:`.layers`: one layer's forward + backward, EN against BN, GN(32), SN, EN's
  PyTorch reference and that reference under ``torch.compile``;
- :mod:`.passes`: EN's passes over X against GroupNorm's kernels, and each layer's time
  beyond them;
- :mod:`.model`: one training iteration of DeepLabV3 R50-D8 with EN, BN and GN(32);
- :mod:`.flops`: parameters and FLOPs of a segmentor, with handles for the en_seg ops;
- :mod:`.ratio`: the ratio branch alone, compiled op against the PyTorch reference;
- :mod:`.report`: the Markdown tables of the results;
- :mod:`.doc_section`: a section of a Markdown file, rewritten in place (``--doc``).

The modules import torch (and torchvision, mmengine, mmseg for the model where asked);
none imports the tests. The targets the results are judged by are written down in
docs/benchmark_layer_model.md.
"""
