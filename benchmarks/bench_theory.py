"""Floor predictors on measurement-sized importance profiles."""

import numpy as np

from pyfloor import theory


class ImportanceFloor:
    """Eq. 2 over 100 widths for F importances (the paper measures F = 28,665)."""

    params = [28_665, 1_000_000]
    param_names = ["n_features"]

    def setup(self, n_features):
        rng = np.random.default_rng(0)
        self.importances = np.sort(rng.pareto(1.2, n_features))[::-1].copy()
        self.widths = np.linspace(1, theory.critical_width(n_features, 0.99), 100)

    def time_importance_floor(self, n_features):
        theory.importance_floor(self.widths, 0.99, self.importances)

    def time_effective_budget(self, n_features):
        theory.effective_budget(np.linspace(0, self.importances.sum(), 100), self.importances)
