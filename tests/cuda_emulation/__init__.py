"""An emulation that runs the project's CUDA kernels (en_seg/ops/csrc/cuda) on the CPU, for
tests/test_cuda_emulation.py: a CUDA header and fiber scheduler (include/, runtime.cpp),
the build that rewrites and compiles the kernels with g++ (rewrite.py, build.py) and their
launchers as functions of torch tensors (kernels.py)."""
