"""t-SNE of every image's ratios of all EN layers (paper Fig. 8)."""
from typing import Optional

import numpy as np
from sklearn.manifold import TSNE


def tsne_embedding(features: np.ndarray, perplexity: Optional[float] = None,
                   seed: int = 0) -> np.ndarray:
    """Embed per-image ratio vectors in 2-D with scikit-learn's t-SNE.

    Args:
        features: (I, D) per-image features, e.g. :meth:`RatioTable.features` (the
            ratios of all layers side by side).
        perplexity: t-SNE perplexity, must be below I. Default: None, which takes
            ``min(30, max(1, (I - 1) / 3))``, scikit-learn's 30 shrunk for small splits.
        seed: random state; the same seed gives the same embedding. Default: 0.

    Returns:
        (I, 2) float64 coordinates. When all rows are equal (one image, or a ratio
        branch that ignores its input) every point is at the origin: t-SNE is undefined
        for a set without distances, and scikit-learn crashes on it.

    Raises:
        ValueError: if ``features`` is not 2-D, or ``perplexity`` is not in (0, I).
    """
    features = np.asarray(features, np.float64)
    if features.ndim != 2:
        raise ValueError(f'features must be (I, D), got shape {features.shape}')
    num_images = features.shape[0]
    if perplexity is None:
        perplexity = min(30.0, max(1.0, (num_images - 1) / 3))
    elif not 0 < perplexity < num_images:
        raise ValueError(f'perplexity must lie in (0, {num_images}) for {num_images} '
                         f'images, got {perplexity}')
    if np.all(features == features[:1]):
        return np.zeros((num_images, 2))
    tsne = TSNE(n_components=2, perplexity=perplexity, init='pca', random_state=seed)
    return tsne.fit_transform(features).astype(np.float64)
