"""FeatureStats: the numpy reference accumulation and the merge done per step and per rank."""

import numpy as np

from pyfloor.stats import FeatureStats


class Accumulate:
    """Per-latent statistics of a batch of dense latents (tokens × latents)."""

    params = [(1024, 32_768)]
    param_names = ["shape"]

    def setup(self, shape):
        rng = np.random.default_rng(0)
        n, m = shape
        self.z = (rng.exponential(size=(n, m)) * (rng.random((n, m)) < 0.01)).astype(np.float32)
        self.stats = FeatureStats.from_activations(self.z)

    def time_from_activations(self, shape):
        FeatureStats.from_activations(self.z)

    def time_merge(self, shape):
        self.stats.merge(self.stats)
