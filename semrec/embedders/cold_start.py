"""Vectors for cold items: a text-to-CF regressor fitted on the warm items.

A collaborative-filtering embedder has nothing to say about an item without a training
interaction (``cold`` items, and items added to a trained run later). :class:`TextToCF`
learns a ridge regression from the items' text embeddings to their CF vectors on the warm
items and predicts the cold ones, so they land near warm items with similar text instead
of at a random point. Ridge (scikit-learn), because the warm set is small (hundreds to
thousands of items) next to the text width (384 for MiniLM).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV, KFold

#: The L2 strengths cross-validation chooses among (``alpha=None``).
ALPHAS = tuple(float(a) for a in np.logspace(-3, 3, 13))


class TextToCF:
    """Ridge regression text embedding -> CF vector.

    ``alpha`` is the L2 strength; ``None`` (default) picks it from :data:`ALPHAS` by 5-fold
    cross-validation over shuffled items (item ids are often ordered by age or popularity,
    so unshuffled folds would test on another kind of item). ``validation_r2`` is then the
    cross-validated R^2 of the chosen alpha (averaged over the CF dimensions).
    """

    def __init__(self, alpha: float | None = None, seed: int = 0) -> None:
        if alpha is not None and alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        self.alpha = alpha
        self.seed = seed
        self._ridge: Ridge | None = None
        self.validation_r2: float | None = None

    def fit(self, text: torch.Tensor, cf: torch.Tensor) -> TextToCF:
        """Fit on warm items' ``text`` [n, d_text] and ``cf`` [n, d_cf] vectors."""
        if text.shape[0] != cf.shape[0] or text.shape[0] < 2:
            raise ValueError(
                f"need the same number (>= 2) of text and CF rows, got {text.shape[0]} and "
                f"{cf.shape[0]}"
            )
        x, y = text.double().numpy(), cf.double().numpy()
        alphas = ALPHAS if self.alpha is None else (self.alpha,)
        if len(x) < 10:  # too few for cross-validation
            self._ridge = Ridge(alpha=alphas[len(alphas) // 2]).fit(x, y)
            self.validation_r2 = None
            return self
        search = GridSearchCV(
            Ridge(),
            {"alpha": list(alphas)},
            cv=KFold(5, shuffle=True, random_state=self.seed),
            scoring="r2",
        ).fit(x, y)
        self._ridge = search.best_estimator_
        self.validation_r2 = float(search.best_score_)
        return self

    def predict(self, text: torch.Tensor) -> torch.Tensor:
        """CF vectors [m, d_cf] for text embeddings [m, d_text]."""
        if self._ridge is None:
            raise RuntimeError("TextToCF is not fitted; call fit(text, cf) first")
        return torch.from_numpy(self._ridge.predict(text.double().numpy())).float()
