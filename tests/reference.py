"""Independent references written from the papers (docs/method.md), and the inputs the
tests feed them, for the tests only.

They materialise the K normalized maps literally and take every statistic directly from
X with torch.var / torch.mean over the normalizer's axes, unlike the layers under test,
which merge per-(n, c) moments and fold everything into one affine map.
"""
import torch
import torch.nn.functional as F

AXES = {'IN': (2, 3), 'LN': (1, 2, 3), 'BN': (0, 2, 3)}


def normalizer_stats(x, name, running_mean=None, running_var=None):
    """Mean and biased variance of normalizer ``name``, broadcastable to x."""
    if name == 'BN' and running_mean is not None:
        return running_mean[None, :, None, None], running_var[None, :, None, None]
    axes = AXES[name]
    return x.mean(axes, keepdim=True), x.var(axes, keepdim=True, unbiased=False)


def exemplar_norm(x, layer, use_running_bn=False):
    """Eq. 3 with the ratio branch of Sec. 3.3, from the layer's parameters."""
    n, c = x.shape[:2]
    eps = layer.eps
    stats = [normalizer_stats(x, name, *((layer.running_mean, layer.running_var)
                                        if use_running_bn and name == 'BN' else ()))
             for name in layer.normalizers]
    pooled = x.mean((2, 3))
    x_hat = torch.stack([((pooled[:, :, None, None] - mu) / (var + eps).sqrt())[:, :, 0, 0]
                         for mu, var in stats], 1)                       # (N, K, C)
    k = x_hat.shape[1]
    groups = layer.ratio_conv.weight.shape[0]
    z = F.conv1d(x_hat.reshape(n * k, c, 1), layer.ratio_conv.weight, groups=groups)
    z = z.reshape(n, k, groups)
    v = torch.einsum('nkg,nlg->nkl', z, z).reshape(n, k * k)
    h = torch.tanh(v @ layer.ratio_fc1.weight.t() + layer.ratio_fc1.bias)
    ratios = torch.softmax(h @ layer.ratio_fc2.weight.t() + layer.ratio_fc2.bias, 1)
    y = 0
    for i, (mu, var) in enumerate(stats):
        normalized = (x - mu) / (var + eps).sqrt()
        y = y + (layer.weight[i][None, :, None, None] * ratios[:, i, None, None, None]
                 * normalized + layer.bias[i][None, :, None, None])
    return y, ratios


def switchable_norm(x, layer, use_running_bn=False):
    """Luo et al.: mix means and variances with softmax weights, one γ, β."""
    stats = [normalizer_stats(x, name, *((layer.running_mean, layer.running_var)
                                        if use_running_bn and name == 'BN' else ()))
             for name in layer.normalizers]
    w_mean = torch.softmax(layer.mean_weight, 0)
    w_var = torch.softmax(layer.var_weight, 0)
    mean = sum(w * mu for w, (mu, _) in zip(w_mean, stats))
    var = sum(w * v for w, (_, v) in zip(w_var, stats))
    return (layer.weight[None, :, None, None] * (x - mean) / (var + layer.eps).sqrt()
            + layer.bias[None, :, None, None])


def randomized(layer, seed=0):
    """Move a layer's parameters and running statistics off their initial values, in
    place, so the ratios differ per sample and per normalizer. Returns the layer."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in layer.parameters():
            param.copy_(torch.randn(param.shape, generator=gen, dtype=param.dtype))
        if layer.running_mean is not None:
            layer.running_mean.copy_(torch.randn(layer.num_features, generator=gen))
            layer.running_var.copy_(torch.rand(layer.num_features, generator=gen) + 0.5)
    return layer


def ratio_inputs(n, k, c, r, dtype=torch.float64, device='cpu', seed=0, hidden=None):
    """The ratio op's 8 inputs, requiring grad, with ``hidden`` units (default π·K, π = 50):
    statistics of order 1 and weights scaled so that z, v = z zᵀ and tanh's input are of
    order 1 (no saturated unit, so every gradient is informative)."""
    gen = torch.Generator().manual_seed(seed)
    hidden, groups = hidden or 50 * k, c // r

    def normal(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale

    tensors = [normal(n, c), normal(n, k, c),
               torch.rand(n, k, c, generator=gen, dtype=torch.float64) + 0.5,
               normal(groups, r, 1, scale=r ** -0.5),
               normal(hidden, k * k, scale=1 / (k * groups)), normal(hidden, scale=0.1),
               normal(k, hidden, scale=hidden ** -0.5), normal(k, scale=0.1)]
    return [t.to(device, dtype).requires_grad_() for t in tensors]


#: (dtype, scale) of moments near the dtype's overflow: float32 data of order 1e19 have a
#: sum of squares past FLT_MAX and a finite variance, from 1e20 an infinite one; at 1e38
#: the sums themselves overflow. Likewise for float64 around 1e154 and 1e300.
HUGE_SCALES = [(torch.float32, 1e19), (torch.float32, 1e20), (torch.float32, 1e38),
               (torch.bfloat16, 1e38), (torch.float64, 1e150), (torch.float64, 1e160),
               (torch.float64, 1e300)]


def huge_activation(shape, dtype, scale, channels_last=False, seed=0):
    """Values uniform in ±1.5·scale, and the first two channels constant at scale."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=gen, dtype=torch.float64) * 3 - 1.5
    x[:, :2] = 1.0
    x = (x * scale).to(dtype)
    return x.contiguous(memory_format=torch.channels_last if channels_last else
                        torch.contiguous_format)


def assert_moments_follow_var_mean(x, mean, var, scale):
    """(N, C) moments of x as torch.var_mean gives them from float64, rounded to the
    statistics' dtype: never NaN; a constant plane exactly its value with variance 0; an
    infinite variance where that one is; else equal to 1e-4 (the mean to 1e-5 of scale)."""
    expected_var, expected_mean = torch.var_mean(x.double(), dim=(2, 3), unbiased=False)
    expected_var, expected_mean = expected_var.to(var.dtype), expected_mean.to(mean.dtype)
    assert not mean.isnan().any() and not var.isnan().any()
    constant = (x.amax((2, 3)) == x.amin((2, 3)))
    assert torch.equal(var[constant], torch.zeros_like(var[constant]))
    assert torch.equal(mean[constant], x[:, :, 0, 0][constant].to(mean.dtype))
    finite = torch.isfinite(expected_var)
    assert torch.isinf(var[~finite]).all()
    torch.testing.assert_close(var[finite], expected_var[finite], rtol=1e-4, atol=0)
    torch.testing.assert_close(mean, expected_mean, rtol=1e-4, atol=1e-5 * scale)
