"""LightGBM's pred_contrib, tree by tree, remembered by each tree's split outcomes.

A tree's TreeSHAP contributions read the input only through the outcome of the tree's own splits (one bit per
split: does the row go left?), so two rows with the same bits in a tree get the same contributions from it.
This keeps, per tree, the contributions LightGBM computed for each bit pattern it has seen; a row's
contributions are then the sum over trees of remembered vectors (~30 µs instead of ~300 µs of TreeSHAP over
the whole model). An unseen pattern is computed by LightGBM itself for that one tree, so every number still
comes from LightGBM's TreeSHAP; only the order of the additions across trees differs (last-bit rounding).

Only plain numerical splits with no missing-value rule are supported (what the project's models use); any
other model, or a self-check that disagrees with the whole-model pred_contrib, leaves `usable` False and the
scorer keeps calling pred_contrib for the whole model. One per scorer, one thread (shared buffers).
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

log = logging.getLogger("floatbridge.underwriter")

# LightGBM drops |x| <= 1e-35f from a dense row before predicting (RowFunctionFromDenseMatric), so such values
# reach the splits as 0.0; NaN reaches them as 0.0 too when a split has no missing-value rule.
_K_ZERO = float(np.float32(1e-35))
_MAX_SPLITS = 15  # index table of 2**splits rows per tree: 15 -> 32,768 (the project's models have 14)
_PREDICT_CONTRIB = 3
_DTYPE_FLOAT64 = 1


class ContribCache:
    def __init__(self, model_file: str, n_features: int, num_trees: int, max_entries: int = 250_000) -> None:
        import lightgbm as lgb

        self.usable = False
        self.hits = 0
        self.misses = 0
        self._n = n_features
        # A booster of its own: computing one tree re-initialises the booster's prediction range, which must
        # never touch the scorer's own booster.
        self._booster = lgb.Booster(model_file=model_file)
        self._lib, self._safe_call = _lib()
        trees = self._booster.dump_model()["tree_info"][:num_trees]
        plan = _plan(trees, n_features)
        if plan is None:
            return
        self._feat, self._thr, self._cols, self._splits = plan
        self._trees = len(trees)
        self._width = self._cols.shape[1]
        self._cols_flat = self._cols.ravel()
        # Padding slots repeat the bias index after the first slot; they hold 0.0 (adding 0.0 changes nothing).
        self._pad = self._cols == n_features
        self._pad[:, 0] = False
        self._pow2 = (1 << np.arange(self._splits)).astype(np.int64)
        self._base = np.arange(self._trees, dtype=np.int64) << self._splits
        self._index = np.full(self._trees << self._splits, -1, dtype=np.int32)
        self._max_entries = max(max_entries, self._trees)
        self._vals = np.zeros((min(self._max_entries, 4096), self._width), dtype=np.float64)
        self._used = 0
        self._row = (ctypes.c_double * n_features)()
        self._out = (ctypes.c_double * (n_features + 1))()
        self._out_len = ctypes.c_int64(0)
        self.usable = True

    def contributions(self, features: list[float]) -> np.ndarray | None:
        """The n+1 contributions of the whole model (bias last), or None if this model can't be served."""
        if not self.usable:
            return None
        x = np.array(features, dtype=np.float64)
        x[np.isnan(x) | (np.abs(x) <= _K_ZERO)] = 0.0
        masks = (x[self._feat] <= self._thr) @ self._pow2
        keys = self._base + masks
        ids = self._index[keys]
        missing = np.flatnonzero(ids < 0)
        if missing.size:
            if self._used + missing.size > self._max_entries:
                self._index.fill(-1)  # bounded memory: start over rather than grow
                self._used = 0
                ids = self._index[keys]
                missing = np.arange(self._trees)
            self.misses += int(missing.size)
            self._row[:] = features
            for t in missing.tolist():
                entry = self._learn(int(t), int(keys[t]))
                if entry < 0:
                    return None
                ids[t] = entry
        self.hits += self._trees - int(missing.size)
        v = self._vals[ids]
        return np.bincount(self._cols_flat, weights=v.ravel(), minlength=self._n + 1)

    def _learn(self, tree: int, key: int) -> int:
        """Computes one tree's contributions with LightGBM and remembers them; -1 (and unusable) if they fall
        outside the features the tree splits on, which would mean the plan is wrong."""
        cfg = ctypes.c_void_p()
        lib, call = self._lib, self._safe_call
        call(lib.LGBM_BoosterPredictForMatSingleRowFastInit(
            self._booster._handle, ctypes.c_int(_PREDICT_CONTRIB), ctypes.c_int(tree), ctypes.c_int(1),
            ctypes.c_int(_DTYPE_FLOAT64), ctypes.c_int32(self._n), ctypes.c_char_p(b"num_threads=1"),
            ctypes.byref(cfg)))
        try:
            call(lib.LGBM_BoosterPredictForMatSingleRowFast(cfg, self._row, ctypes.byref(self._out_len), self._out))
        finally:
            lib.LGBM_FastConfigFree(cfg)
        full = np.frombuffer(self._out, dtype=np.float64).copy()
        cols = self._cols[tree]
        kept = full[cols]
        rest = full.copy()
        rest[cols] = 0.0
        if np.any(rest != 0.0):
            log.warning("contribution cache disabled: tree %d has contributions outside its split features", tree)
            self.usable = False
            return -1
        if self._used == len(self._vals):
            grown = np.zeros((min(self._max_entries, 2 * len(self._vals)), self._width), dtype=np.float64)
            grown[: self._used] = self._vals[: self._used]
            self._vals = grown
        entry = self._used
        self._vals[entry] = np.where(self._pad[tree], 0.0, kept)
        self._index[key] = entry
        self._used += 1
        return entry

    def verify(self, whole_model: Callable[[list[float]], Sequence[float]], rows: int = 24, seed: int = 7) -> bool:
        """Checks the cache against the whole model's pred_contrib on rows built from the model's own thresholds
        (every value sits exactly on, just below or just above a split) and on zero/negative rows; any
        disagreement beyond rounding leaves the cache unusable. Entries learnt here stay (they are correct)."""
        if not self.usable:
            return False
        rng = np.random.default_rng(seed)
        by_feature: dict[int, list[float]] = {}
        for f, th in zip(self._feat.ravel().tolist(), self._thr.ravel().tolist(), strict=True):
            if th != -np.inf:
                by_feature.setdefault(f, []).append(th)
        probes: list[list[float]] = [[0.0] * self._n, [-1.0] * self._n]
        for i in range(rows):
            row = []
            for f in range(self._n):
                options = by_feature.get(f) or [0.0]
                th = options[int(rng.integers(len(options)))]
                row.append(float([th, np.nextafter(th, -np.inf), np.nextafter(th, np.inf)][i % 3]))
            probes.append(row)
        for row in probes:
            mine = self.contributions(row)
            if mine is None:
                return False
            theirs = np.asarray(list(whole_model(row)), dtype=np.float64)
            if theirs.shape != mine.shape or not np.allclose(mine, theirs, rtol=1e-9, atol=1e-12):
                log.warning("contribution cache disabled: it disagrees with pred_contrib on a self-check row")
                self.usable = False
                return False
        return True

    def entries(self) -> int:
        return self._used if self.usable else 0


def _plan(trees: list[dict[str, Any]], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
    """Per tree: each split's feature and threshold (bit k = split k, LightGBM's split_index) and the columns
    its contributions can touch (bias first). None if any split is not a plain numerical `<=` split."""
    splits_per_tree: list[list[tuple[int, int, float]]] = []
    for tree in trees:
        nodes: list[tuple[int, int, float]] = []
        stack = [tree["tree_structure"]]
        while stack:
            node = stack.pop()
            if "split_index" not in node:
                continue
            if node.get("decision_type") != "<=" or node.get("missing_type") not in ("None", None):
                return None
            nodes.append((int(node["split_index"]), int(node["split_feature"]), float(node["threshold"])))
            stack.extend((node["left_child"], node["right_child"]))
        splits_per_tree.append(nodes)
    splits = max((len(s) for s in splits_per_tree), default=0)
    if splits == 0 or splits > _MAX_SPLITS:
        return None
    t = len(trees)
    feat = np.zeros((t, splits), dtype=np.int64)
    thr = np.full((t, splits), -np.inf)  # unused bits: x <= -inf is false for every value a row can hold
    used: list[list[int]] = []
    for i, nodes in enumerate(splits_per_tree):
        if sorted(k for k, _, _ in nodes) != list(range(len(nodes))):
            return None
        for k, f, th in nodes:
            if not 0 <= f < n:
                return None
            feat[i, k], thr[i, k] = f, th
        used.append(sorted({f for _, f, _ in nodes}))
    width = 1 + max(len(u) for u in used)
    cols = np.full((t, width), n, dtype=np.int64)
    for i, u in enumerate(used):
        cols[i, 1: 1 + len(u)] = u
    return feat, thr, cols, splits


def _lib() -> tuple[Any, Any]:
    from lightgbm.basic import _LIB, _safe_call

    return _LIB, _safe_call
