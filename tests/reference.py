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
