"""The template every model follows (scikit-learn estimator contract).

`__init__` stores hyperparameters only; `fit(train)` learns from training examples and
returns self; `score(state)` gives one score per (customer, product); `recommend` excludes
held products and takes the top k. Subclasses implement `_fit` and `_score`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Self

import numpy as np
import pandas as pd

from recommender.errors import NotFittedError
from recommender.protocol import Examples
from recommender.ranking import top_k
from recommender.state import CustomerState


class Recommender(ABC):
    name: ClassVar[str]

    def fit(self, train: Examples, products: pd.DataFrame | None = None) -> Self:
        """Learn from training examples; `products` is the catalog, in column order."""
        self.n_products_ = train.targets.shape[1]
        self._fit(train, products)
        return self

    def score(self, state: CustomerState) -> np.ndarray:
        if not hasattr(self, "n_products_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit(train) first")
        return self._score(state)

    def recommend(
        self, state: CustomerState, k: int, exclude_held: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """(items, scores), each (n, k); padding item -1 where nothing is left to offer."""
        exclude = state.held if exclude_held else None
        return top_k(self.score(state), k, exclude)

    @abstractmethod
    def _fit(self, train: Examples, products: pd.DataFrame | None) -> None: ...

    @abstractmethod
    def _score(self, state: CustomerState) -> np.ndarray: ...
