"""The hybrid model: LightFM over customer-state features and product features.

Each training example is a customer's state *before* an acquisition (attributes, value
tier, holdings and holdings history, encoded by `FeatureBuilder`) with the acquired
products as positives. LightFM learns an embedding and a bias for every customer feature
and product feature; a state's score for product i is

    score(u, i) = sum_f x_uf * (e_f . q_i) + b_i,    q_i = sum_g y_ig * e_g

so it decomposes exactly into one contribution per active customer feature plus the
product's own bias (see `contributions`). LightFM's customer-feature biases add the same
amount to every product of a customer; they cannot change a ranking and are left out.
Any customer, including one never seen in training, is scored from their current features.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recommender import columns as C
from recommender.errors import ConfigError, ModelFitError, NotFittedError
from recommender.explanation import row_reasons, top_reasons, vocabulary_words
from recommender.features import FeatureBuilder, FeatureOptions, coarse
from recommender.history import DAYS_PER_MONTH
from recommender.models.base import Recommender
from recommender.models.rerank import RerankConfig, Reranker
from recommender.probability import ProbabilityCalibrator
from recommender.protocol import Examples
from recommender.state import CustomerState

HELD_WEIGHT = 1e-9
CACHES = ("_cache", "_words_cache")
FEW_ROWS = 64  # up to this many rows, reasons are computed row by row on non-zeros
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
    num_threads: int = 0  # 0: all cores (members are fitted in parallel)
    ensemble: int = 1  # members with seeds random_state, random_state+1, ...; scores averaged
    # The same members once more on a coarse encoding of the customer (`features.coarse`):
    # fine tokens fit one bank, coarse ones another; their average holds up on both (README).
    coarse_view: bool = True
    item_features: bool = True  # category, risk level, family besides the product id
    # WARP never samples a held product as a negative: 5x the fitting time, no better on
    # real data (README, "Quality"); held products are excluded when recommending anyway.
    held_not_negative: bool = False
    normalize: bool = False  # scale each customer's feature row to sum 1
    rerank: bool = False  # second stage: gradient-boosted re-ranker over LightFM's candidates
    rerank_candidates: int = 10
    rerank_rounds: int = 200
    recency_half_life: float = 0.0  # months; >0 weighs an acquisition by 0.5**(age/half-life)
    features: FeatureOptions = field(default_factory=FeatureOptions)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigError(f"loss {self.loss!r} is not one of {', '.join(LOSSES)}")
        for name in ("no_components", "epochs", "max_sampled", "ensemble", "rerank_candidates",
                     "rerank_rounds"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.recency_half_life < 0:
            raise ConfigError(
                "recency_half_life must be 0 (off) or a positive number of months "
                f"(got {self.recency_half_life})"
            )
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
        cfg = self.config or HybridConfig()
        if products is None:
            products = pd.DataFrame({C.PRODUCT_ID: [str(i) for i in range(self.n_products_)]})
        ids = [str(p) for p in products[C.PRODUCT_ID]]
        views = [cfg.features, coarse(cfg.features)] if cfg.coarse_view else [cfg.features]
        self.builders_ = [FeatureBuilder(o).fit(train.state, ids) for o in views]
        self.builder_ = self.builders_[0]
        self.vocabulary_ = [t for b in self.builders_ for t in b.vocabulary_]
        self.product_names_ = _names(products)
        self.item_features_, self.item_vocabulary_ = item_feature_matrix(
            products, cfg.item_features
        )
        users = self._user_features(train.state, cfg)
        interactions, weights = _interactions(train, cfg.held_not_negative, cfg.recency_half_life)
        bounds = np.cumsum([0] + [len(b.vocabulary_) for b in self.builders_])
        members = [
            (v, cfg.random_state + m) for v in range(len(views)) for m in range(cfg.ensemble)
        ]
        threads = cfg.num_threads or _cpu_count()
        with ThreadPoolExecutor(max_workers=min(threads, len(members))) as pool:
            fitted = list(pool.map(lambda member: self._fit_one(
                member[1], cfg, users[:, bounds[member[0]]:bounds[member[0] + 1]], interactions,
                weights), members))  # fmt: skip
        self._keep_embeddings(fitted, [bounds[v] for v, _ in members])
        self.reranker_ = self._fit_reranker(train, products, cfg) if cfg.rerank else None

    def _fit_reranker(self, train: Examples, products: pd.DataFrame, cfg: HybridConfig) -> Reranker:
        """The second stage, trained on LightFM scores of customers the scoring LightFM did
        not see: two LightFM fits on halves of the customers, each scoring the other half."""
        first_stage = replace(cfg, rerank=False)
        ids = pd.Series(train.state.customer_ids).astype(str)
        half = pd.util.hash_pandas_object(ids, index=False).to_numpy() % 2
        unseen = np.zeros(train.targets.shape)
        for fold in (0, 1):
            fit_rows, score_rows = np.flatnonzero(half != fold), np.flatnonzero(half == fold)
            if not len(fit_rows) or not len(score_rows):
                raise ModelFitError("the re-ranker needs training examples from 2+ customers")
            part = Examples(train.state.take(fit_rows), train.targets[fit_rows])
            model = HybridModel(first_stage).fit(part, products)
            unseen[score_rows] = model.score(train.state.take(score_rows))
        config = RerankConfig(
            candidates=cfg.rerank_candidates,
            rounds=cfg.rerank_rounds,
            random_state=cfg.random_state,
            num_threads=cfg.num_threads,
        )
        return Reranker(config).fit(train.state, unseen, train.targets)

    def _fit_one(
        self,
        seed: int,
        cfg: HybridConfig,
        users: sp.csr_matrix,
        interactions: sp.coo_matrix,
        weights: sp.coo_matrix,
    ) -> Any:
        """One LightFM fit on one thread, so the result depends only on the seed."""
        from lightfm import LightFM

        model = LightFM(
            no_components=cfg.no_components,
            loss=cfg.loss,
            learning_rate=cfg.learning_rate,
            user_alpha=cfg.user_alpha,
            item_alpha=cfg.item_alpha,
            max_sampled=cfg.max_sampled,
            random_state=np.random.RandomState(seed),
        )
        return model.fit(
            interactions,
            sample_weight=weights,
            user_features=users,
            item_features=self.item_features_,
            epochs=cfg.epochs,
            num_threads=1,
        )

    def _keep_embeddings(self, models: list[Any], first_rows: list[int]) -> None:
        """Average of the members' scores, stored as one model with stacked embeddings: member
        m's feature embeddings fill its view's rows (from `first_rows[m]`) and its columns,
        zero elsewhere, so one product with the joined feature matrix scores every member."""
        m = len(models)
        items = self.item_features_
        blocks = [np.asarray(x.user_embeddings, np.float64) for x in models]
        self.user_embeddings_ = np.zeros((len(self.vocabulary_), sum(b.shape[1] for b in blocks)))
        column = 0
        for block, row in zip(blocks, first_rows, strict=True):
            self.user_embeddings_[row : row + len(block), column : column + block.shape[1]] = block
            column += block.shape[1]
        self.item_repr_ = (
            np.hstack([items @ np.asarray(x.item_embeddings, np.float64) for x in models]) / m
        )
        self.item_bias_ = np.mean(
            [items @ np.asarray(x.item_biases, np.float64) for x in models], axis=0
        )
        if not (np.isfinite(self.user_embeddings_).all() and np.isfinite(self.item_repr_).all()):
            raise ModelFitError(
                "LightFM produced NaN or infinite embeddings; lower learning_rate or raise "
                "user_alpha/item_alpha"
            )

    def _user_features(self, state: CustomerState, cfg: HybridConfig) -> sp.csr_matrix:
        """Each view's features side by side (columns in `vocabulary_` order)."""
        parts = []
        for builder in self.__dict__.get("builders_", [self.builder_]):  # older models: one
            x = builder.transform(state)
            if cfg.normalize:
                sums = np.asarray(x.sum(axis=1)).ravel()
                x = sp.diags(1.0 / np.maximum(sums, 1.0)) @ x
            parts.append(x)
        return sp.csr_matrix(sp.hstack(parts, format="csr"), dtype=np.float32)

    def _score(self, state: CustomerState) -> np.ndarray:
        return self.score_features(self.features(state), state)

    def _second_stage(self) -> Reranker:
        reranker: Reranker | None = getattr(self, "reranker_", None)
        if reranker is None:
            raise NotFittedError("this model has no second stage; fit it with rerank=True")
        return reranker

    @property
    def reranked(self) -> bool:
        """Whether a second stage re-ranks (it reads the customers' attributes and history)."""
        return getattr(self, "reranker_", None) is not None

    def features(self, state: CustomerState) -> sp.csr_matrix:
        """The customer-feature matrix of `state` (what scoring and explanations read)."""
        return self._user_features(state, self.config or HybridConfig())

    def score_features(self, x: sp.csr_matrix, state: CustomerState | None = None) -> np.ndarray:
        """Scores from a feature matrix, e.g. one precomputed for every known customer;
        a re-ranked model also needs the customers' `state`."""
        scores: np.ndarray = self.first_stage(x)
        if self.reranked:
            if state is None:
                raise ConfigError("a re-ranked model scores from the customers' state too")
            return np.asarray(self._second_stage().score(state, scores))
        return scores

    def first_stage(self, x: sp.csr_matrix) -> np.ndarray:
        """LightFM's scores from a feature matrix."""
        scores: np.ndarray = (x @ self.user_embeddings_) @ self.item_repr_.T + self.item_bias_
        return scores

    def _weights(self, relative: bool) -> tuple[np.ndarray, np.ndarray]:
        """(features, products) contribution of each feature to each product, and the base;
        computed once per model."""
        cache: dict[bool, tuple[np.ndarray, np.ndarray]] = self.__dict__.setdefault("_cache", {})
        if relative not in cache:
            per_feature = self.user_embeddings_ @ self.item_repr_.T
            base = self.item_bias_
            if relative:
                per_feature = per_feature - per_feature.mean(axis=1, keepdims=True)
                base = base - base.mean()
            cache[relative] = (per_feature, base)
        return cache[relative]

    def contributions(
        self,
        state: CustomerState,
        products: np.ndarray,
        relative: bool = False,
        x: sp.csr_matrix | None = None,
    ) -> tuple[sp.csr_matrix, np.ndarray]:
        """Per-feature contributions to row i's score for product `products[i]`, and the base.

        Row sums of the (customers, features) matrix plus `base` equal the scores exactly.
        With `relative`, each feature's contribution is measured against its mean over all
        products (what makes this product stand out), and the sum equals the score minus
        the customer's mean score. `x` is the state's feature matrix, if already built.
        """
        x = self.features(state) if x is None else x
        per_feature, base = self._weights(relative)
        rows = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
        values = x.data * per_feature[x.indices, products[rows]]
        parts = sp.csr_matrix((values, x.indices, x.indptr), shape=x.shape)
        return parts, base[products]

    def calibrate(self, calibrator: ProbabilityCalibrator) -> HybridModel:
        """Attach a calibrator fitted on held-out scores (see `probability.fit_calibrator`)."""
        self.calibrator_ = calibrator
        return self

    def predict_proba(self, state: CustomerState, scores: np.ndarray | None = None) -> np.ndarray:
        """Calibrated acquisition probabilities, one per (customer, product)."""
        if not hasattr(self, "calibrator_"):
            raise NotFittedError("HybridModel has no calibrator; call calibrate(...) first")
        return self.calibrator_.predict(self.score(state) if scores is None else scores, state.held)

    def __getstate__(self) -> dict[str, Any]:
        """Derived caches are rebuilt after loading, never saved with the model."""
        return {k: v for k, v in self.__dict__.items() if k not in CACHES}

    def _words(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cached: tuple[np.ndarray, np.ndarray, np.ndarray] | None = self.__dict__.get("_words_cache")
        if cached is None:
            vocabulary = self.__dict__.get("vocabulary_", self.builder_.vocabulary_)
            cached = vocabulary_words(vocabulary, self.product_names_)
            self.__dict__["_words_cache"] = cached
        return cached

    def reasons(
        self, state: CustomerState, items: np.ndarray, n: int = 3, x: sp.csr_matrix | None = None
    ) -> list[list[list[str]]]:
        """Words for each recommended item: `reasons[row][rank]` is a list of up to n."""
        x = self.features(state) if x is None else x
        first = self._first_stage_reasons(state, items, n, x)
        if not self.reranked:
            return first
        rows, ranks = np.nonzero(items >= 0)
        products = items[rows, ranks]
        reranker = self._second_stage()
        parts, values = reranker.contributions(state, self.first_stage(x), rows, products)
        lightfm_words = [first[r][j] for r, j in zip(rows, ranks, strict=True)]
        names = [self.product_names_.get(p, p) for p in self.builder_.product_ids_]
        words = reranker.reasons(parts, values, lightfm_words, names, n)
        out: list[list[list[str]]] = [
            [[] for _ in range(items.shape[1])] for _ in range(len(state))
        ]
        for pair, (r, j) in enumerate(zip(rows, ranks, strict=True)):
            out[r][j] = words[pair]
        return out

    def _first_stage_reasons(
        self, state: CustomerState, items: np.ndarray, n: int, x: sp.csr_matrix
    ) -> list[list[list[str]]]:
        out: list[list[list[str]]] = [[] for _ in range(len(state))]
        words_of, useless, topics = self._words()
        per_feature, _ = self._weights(relative=True)
        for rank in range(items.shape[1]):
            products = np.maximum(items[:, rank], 0)
            if len(state) <= FEW_ROWS:  # a request: no matrices
                words = row_reasons(x, per_feature, products, words_of, useless, topics, n)
            else:
                parts, _ = self.contributions(state, products, relative=True, x=x)
                words = top_reasons(parts, words_of, useless, topics, n)
            for row in range(len(state)):
                out[row].append(words[row] if items[row, rank] >= 0 else [])
        return out


def _names(products: pd.DataFrame) -> dict[str, str]:
    names = products[C.NAME] if C.NAME in products.columns else products[C.PRODUCT_ID]
    return {str(p): str(n) for p, n in zip(products[C.PRODUCT_ID], names, strict=True)}


def _interactions(
    train: Examples, held_not_negative: bool = True, half_life: float = 0.0
) -> tuple[sp.coo_matrix, sp.coo_matrix]:
    """Acquired products are positives, weighted by recency when `half_life` > 0; with
    `held_not_negative`, held products are listed with a negligible weight so WARP never
    samples them as negatives (they are never offered anyway)."""
    listed_mask = train.targets | train.state.held if held_not_negative else train.targets
    listed = sp.coo_matrix(listed_mask.astype(np.float32))
    acquired = train.targets[listed.row, listed.col]
    weights = np.where(acquired, recency_weights(train.state.as_of, half_life)[listed.row],
                       HELD_WEIGHT).astype(np.float32)  # fmt: skip
    return listed, sp.coo_matrix((weights, (listed.row, listed.col)), shape=listed.shape)


def recency_weights(as_of: np.ndarray, half_life: float) -> np.ndarray:
    """1 for the newest examples, halving every `half_life` months before (0: all 1)."""
    if half_life <= 0 or len(as_of) == 0:
        return np.ones(len(as_of))
    days = (as_of.max() - as_of).astype("timedelta64[D]").astype(float)
    weights: np.ndarray = 0.5 ** (days / DAYS_PER_MONTH / half_life)
    return weights


def _cpu_count() -> int:
    import os

    return max(
        1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
