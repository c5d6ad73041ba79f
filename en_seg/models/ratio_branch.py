"""The ratio branch F(X, Ω; Θ) of Exemplar Normalization in plain PyTorch.

docs/method.md#ratio-branch, steps 2-6 (paper Sec. 3.3, Fig. 2, Eq. 4). This is the
reference the compiled op is checked against, and the fallback where the op is not built.
"""
import torch
import torch.nn.functional as F
from torch import Tensor


def exemplar_ratios_reference(pooled: Tensor, means: Tensor, rstds: Tensor,
                              conv_weight: Tensor, fc1_weight: Tensor, fc1_bias: Tensor,
                              fc2_weight: Tensor, fc2_bias: Tensor) -> Tensor:
    """Per-sample importance ratios λ of K normalizers.

    Args:
        pooled: (N, C) average-pooled features, i.e. the per-(n, c) means of X.
        means: (N, K, C) normalizer k's mean at every (n, c).
        rstds: (N, K, C) normalizer k's 1 / sqrt(variance + eps) at every (n, c).
        conv_weight: (C / r, r, 1) or (C / r, r) weight of the grouped 1-D convolution,
            C / r groups of r channels, no bias.
        fc1_weight, fc1_bias: (πK, K²) and (πK,), the first fully connected layer.
        fc2_weight, fc2_bias: (K, πK) and (K,), the second fully connected layer.
        All tensors share one floating dtype and device.

    Returns:
        (N, K) ratios λ; every row is a softmax and sums to 1.

    Note:
        For IN the pre-normalized input (pooled - mean) * rstd is identically 0, since the
        IN mean of (n, c) is the pooled value itself: a property of the paper's design.
    """
    n, k, c = means.shape
    groups = conv_weight.shape[0]
    x_hat = (pooled.unsqueeze(1) - means) * rstds                      # step 2, (N, K, C)
    z = (x_hat.reshape(n, k, groups, c // groups)
         * conv_weight.reshape(groups, c // groups)).sum(-1)            # step 3, (N, K, C/r)
    v = torch.bmm(z, z.transpose(1, 2)).flatten(1)                    # step 4, (N, K²)
    h = torch.tanh(F.linear(v, fc1_weight, fc1_bias))                  # step 5, (N, πK)
    return torch.softmax(F.linear(h, fc2_weight, fc2_bias), dim=1)    # step 6, (N, K)
