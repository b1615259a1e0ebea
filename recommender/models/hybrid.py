"""The hybrid model: LightFM over customer-state features and product features.

Each training example is a customer's state *before* an acquisition (attributes, value
tier, holdings and holdings history, encoded by `FeatureBuilder`) with the acquired
products as positives. LightFM learns an embedding and a bias for every customer feature
and product feature; a state's score for product i is

    score(u, i) = sum_f x_uf * (e_f . q_i + b_f) + b_i,    q_i = sum_g y_ig * e_g

so it decomposes exactly into one contribution per active customer feature plus the
product's own bias (see `contributions`). Any customer, including one never seen in
training, is scored from their current features.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recommender import columns as C
from recommender.errors import ConfigError, ModelFitError
from recommender.features import FeatureBuilder, FeatureOptions
from recommender.models.base import Recommender
from recommender.protocol import Examples
from recommender.state import CustomerState

LOSSES = ("warp", "bpr", "warp-kos", "logistic")
ITEM_ATTRIBUTES = (C.CATEGORY, C.RISK_LEVEL, "family")


@dataclass(frozen=True)
class HybridConfig:
    """Hyperparameters; `to_dict()` goes to MLflow, `from_dict` rebuilds the same model."""

    loss: str = "warp"
    no_components: int = 48
    learning_rate: float = 0.05
    epochs: int = 30
    user_alpha: float = 1e-6
    item_alpha: float = 1e-6
    max_sampled: int = 10
    random_state: int = 42
    num_threads: int = 0  # 0: all cores
    item_features: bool = True  # category, risk level, family besides the product id
    normalize: bool = False  # scale each customer's feature row to sum 1
    features: FeatureOptions = field(default_factory=FeatureOptions)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigError(f"loss {self.loss!r} is not one of {', '.join(LOSSES)}")
        for name in ("no_components", "epochs", "max_sampled"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be positive (got {self.learning_rate})")

    def to_dict(self) -> dict[str, Any]:
        """Flat dict; feature options are prefixed with `features.`."""
        out = {k: v for k, v in asdict(self).items() if k != "features"}
        out.update({f"features.{k}": v for k, v in self.features.to_dict().items()})
        return out

    @staticmethod
    def from_dict(values: dict[str, Any]) -> HybridConfig:
        known = {f.name for f in fields(HybridConfig)} - {"features"}
        feature_names = {f.name for f in fields(FeatureOptions)}
        top: dict[str, Any] = {}
        feats: dict[str, Any] = {}
        for key, value in values.items():
            if key.startswith("features."):
                name = key.removeprefix("features.")
                if name not in feature_names:
                    raise ConfigError(f"unknown feature option {name!r}")
                feats[name] = tuple(value) if name == "exclude" else value
            elif key in known:
                top[key] = value
            else:
                raise ConfigError(
                    f"unknown hybrid option {key!r}; known: {', '.join(sorted(known))}"
                )
        return HybridConfig(**top, features=FeatureOptions(**feats))


def item_feature_matrix(
    products: pd.DataFrame, use_attributes: bool
) -> tuple[sp.csr_matrix, list[str]]:
    """(products, product features): identity plus catalog attributes present."""
    ids = [str(p) for p in products[C.PRODUCT_ID]]
    names = [f"product:{p}" for p in ids]
    rows, cols = list(range(len(ids))), list(range(len(ids)))
    for column in ITEM_ATTRIBUTES if use_attributes else ():
        if column not in products.columns:
            continue
        values = products[column].astype("string").fillna("").str.strip()
        for i, value in enumerate(values):
            if value:
                token = f"{column}:{value}"
                if token not in names:
                    names.append(token)
                rows.append(i)
                cols.append(names.index(token))
    data = np.ones(len(rows), dtype=np.float32)
    return sp.csr_matrix((data, (rows, cols)), shape=(len(ids), len(names))), names


class HybridModel(Recommender):
    """LightFM on (customer-state features x product features), trained on acquisitions."""

    name = "hybrid"

    def __init__(self, config: HybridConfig | None = None) -> None:
        self.config = config

    def _fit(self, train: Examples, products: pd.DataFrame | None) -> None:
        from lightfm import LightFM

        cfg = self.config or HybridConfig()
        if products is None:
            products = pd.DataFrame({C.PRODUCT_ID: [str(i) for i in range(self.n_products_)]})
        self.builder_ = FeatureBuilder(cfg.features).fit(
            train.state, [str(p) for p in products[C.PRODUCT_ID]]
        )
        self.item_features_, self.item_vocabulary_ = item_feature_matrix(
            products, cfg.item_features
        )
        users = self._user_features(train.state, cfg)
        interactions = sp.coo_matrix(train.targets.astype(np.float32))
        threads = cfg.num_threads or _cpu_count()
        model = LightFM(
            no_components=cfg.no_components,
            loss=cfg.loss,
            learning_rate=cfg.learning_rate,
            user_alpha=cfg.user_alpha,
            item_alpha=cfg.item_alpha,
            max_sampled=cfg.max_sampled,
            random_state=np.random.RandomState(cfg.random_state),
        )
        model.fit(
            interactions,
            user_features=users,
            item_features=self.item_features_,
            epochs=cfg.epochs,
            num_threads=threads,
        )
        self._keep_embeddings(model)

    def _keep_embeddings(self, model: Any) -> None:
        self.user_embeddings_ = np.asarray(model.user_embeddings, dtype=np.float64)
        self.user_biases_ = np.asarray(model.user_biases, dtype=np.float64)
        self.item_repr_ = self.item_features_ @ np.asarray(model.item_embeddings, dtype=np.float64)
        self.item_bias_ = self.item_features_ @ np.asarray(model.item_biases, dtype=np.float64)
        if not (np.isfinite(self.user_embeddings_).all() and np.isfinite(self.item_repr_).all()):
            raise ModelFitError(
                "LightFM produced NaN or infinite embeddings; lower learning_rate or raise "
                "user_alpha/item_alpha"
            )

    def _user_features(self, state: CustomerState, cfg: HybridConfig) -> sp.csr_matrix:
        x = self.builder_.transform(state)
        if cfg.normalize:
            sums = np.asarray(x.sum(axis=1)).ravel()
            x = sp.diags(1.0 / np.maximum(sums, 1.0)) @ x
        return sp.csr_matrix(x, dtype=np.float32)

    def _score(self, state: CustomerState) -> np.ndarray:
        x = self._user_features(state, self.config or HybridConfig())
        users = x @ self.user_embeddings_
        bias = x @ self.user_biases_
        scores: np.ndarray = users @ self.item_repr_.T + self.item_bias_ + bias[:, None]
        return scores

    def contributions(self, state: CustomerState, product: int) -> tuple[sp.csr_matrix, np.ndarray]:
        """Per-feature contributions to each row's score for `product`, and the base.

        Row sums of the (customers, features) matrix plus `base` equal `score(...)[:, product]`.
        """
        x = self._user_features(state, self.config or HybridConfig())
        per_feature = self.user_embeddings_ @ self.item_repr_[product] + self.user_biases_
        base = np.full(len(state), self.item_bias_[product])
        return sp.csr_matrix(x.multiply(per_feature[None, :])), base


def _cpu_count() -> int:
    import os

    return max(
        1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
