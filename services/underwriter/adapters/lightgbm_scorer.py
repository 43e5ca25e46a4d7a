"""LightGBM scorer: calibrated PD and reason codes from pred_contrib, behind the Scorer port."""

from __future__ import annotations

import bisect
import ctypes
import math
from pathlib import Path
from typing import Any

from services.underwriter.adapters.contrib_cache import ContribCache
from services.underwriter.adapters.registry import ModelEntry, RegistryError, load_champion, load_version
from services.underwriter.domain.features import FEATURE_NAMES
from services.underwriter.domain.reasons import feature_reason
from services.underwriter.domain.scoring import Score

TOP_REASONS = 3


class Calibration:
    """Maps a raw model probability to a calibrated PD: isotonic (x/y thresholds) or Platt (a, b)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.kind = spec.get("method", "none")
        if self.kind == "isotonic":
            self.x = [float(v) for v in spec["x"]]
            self.y = [float(v) for v in spec["y"]]
            if len(self.x) != len(self.y) or len(self.x) < 2 or self.x != sorted(self.x):
                raise RegistryError("isotonic calibration needs increasing x and y of the same length (>= 2)")
        elif self.kind == "platt":
            self.a, self.b = float(spec["a"]), float(spec["b"])
        elif self.kind != "none":
            raise RegistryError(f"unknown calibration method {self.kind!r}")

    def __call__(self, p: float) -> float:
        if self.kind == "isotonic":
            x, y = self.x, self.y
            if p <= x[0]:
                return y[0]
            if p >= x[-1]:
                return y[-1]
            i = bisect.bisect_right(x, p)
            x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
            return y0 + (y1 - y0) * (p - x0) / (x1 - x0) if x1 > x0 else y1
        if self.kind == "platt":
            logit = math.log(max(p, 1e-9) / max(1 - p, 1e-9))
            return 1.0 / (1.0 + math.exp(-(self.a * logit + self.b)))
        return p


class _SingleRowPredictor:
    """LightGBM's C fast path for one row (LGBM_BoosterPredictForMatSingleRowFast).

    Booster.predict builds a predictor, copies parameters and converts the input on every call (~0.2 ms);
    this sets that up once and reuses one preallocated input and output buffer, with the same C code
    computing the same numbers. Not thread-safe (the buffers are shared): one per scorer, one thread.
    """

    C_API_DTYPE_FLOAT64 = 1

    def __init__(self, booster: Any, ncol: int, predict_type: int, out_len: int) -> None:
        from lightgbm.basic import _LIB, _safe_call

        self._lib, self._safe_call = _LIB, _safe_call
        self.ncol = ncol
        self._row = (ctypes.c_double * ncol)()
        self._out = (ctypes.c_double * out_len)()
        self._out_len = ctypes.c_int64(0)
        self._config = ctypes.c_void_p()
        # Same iterations as Booster.predict(num_iteration=None): best_iteration (-1/0 = all trees).
        _safe_call(_LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
            booster._handle, ctypes.c_int(predict_type), ctypes.c_int(0), ctypes.c_int(booster.best_iteration),
            ctypes.c_int(self.C_API_DTYPE_FLOAT64), ctypes.c_int32(ncol), ctypes.c_char_p(b"num_threads=1"),
            ctypes.byref(self._config)))

    def __call__(self, features: list[float]) -> Any:
        if len(features) != self.ncol:
            raise ValueError(f"expected {self.ncol} features, got {len(features)}")
        self._row[:] = features
        self._safe_call(self._lib.LGBM_BoosterPredictForMatSingleRowFast(
            self._config, self._row, ctypes.byref(self._out_len), self._out))
        return self._out

    def __del__(self) -> None:
        config = getattr(self, "_config", None)
        if config is not None and config.value:
            self._lib.LGBM_FastConfigFree(config)


C_API_PREDICT_NORMAL, C_API_PREDICT_CONTRIB = 0, 3


class LightGBMScorer:
    def __init__(self, entry: ModelEntry) -> None:
        import lightgbm as lgb
        import numpy as np

        self._np = np
        features = list(entry.metadata["features"])
        if features != list(FEATURE_NAMES):
            extra = [f for f in features if f not in FEATURE_NAMES]
            missing = [f for f in FEATURE_NAMES if f not in features]
            detail = f"missing {missing}, unexpected {extra}" if extra or missing else "same names in a different order"
            raise RegistryError(f"model {entry.version} was trained on different features than this code computes: {detail}")
        self.booster = lgb.Booster(model_file=str(entry.model_file))
        if self.booster.feature_name() != list(FEATURE_NAMES):
            raise RegistryError(f"model {entry.version}: model.txt feature names differ from metadata/FEATURE_NAMES")
        self.calibration = Calibration(entry.metadata.get("calibration", {"method": "none"}))
        self._version = entry.version
        n = len(FEATURE_NAMES)
        self._predict: _SingleRowPredictor | None = None
        self._contrib: _SingleRowPredictor | None = None
        self._cache: ContribCache | None = None
        if self.booster.num_model_per_iteration() == 1:  # binary model: one output (n + 1 contributions)
            self._predict = _SingleRowPredictor(self.booster, n, C_API_PREDICT_NORMAL, 1)
            self._contrib = _SingleRowPredictor(self.booster, n, C_API_PREDICT_CONTRIB, n + 1)
            used = self.booster.best_iteration
            trees = self.booster.num_trees() if used <= 0 else used * self.booster.num_model_per_iteration()
            self._cache = ContribCache(str(entry.model_file), n, trees)
            contrib = self._contrib
            if not self._cache.verify(lambda row: list(contrib(row))):
                self._cache = None

    @classmethod
    def champion(cls, root: str | Path) -> LightGBMScorer:
        return cls(load_champion(root))

    @classmethod
    def version_of(cls, root: str | Path, version: str) -> LightGBMScorer:
        return cls(load_version(root, version))

    @property
    def version(self) -> str:
        return self._version

    def pd_only(self, features: list[float]) -> float:
        """The calibrated PD without reason codes (20x cheaper than pred_contrib)."""
        if self._predict is not None:
            raw = self._predict(features)[0]
        else:
            raw = float(self.booster.predict(self._np.asarray([features], dtype=self._np.float64), num_threads=1)[0])
        return min(1.0, max(0.0, self.calibration(raw)))

    def score(self, features: list[float]) -> Score:
        if len(features) != len(FEATURE_NAMES):
            raise ValueError(f"expected {len(FEATURE_NAMES)} features, got {len(features)}")
        cached = self._cache.contributions(features) if self._cache is not None else None
        if cached is not None:
            contrib = cached.tolist()
            total = float(cached.sum())
        elif self._contrib is not None:
            out = self._contrib(features)
            contrib = list(out)
            # numpy's sum of the same float64 values as np.sum(contrib), read in place (no list -> array copy).
            total = float(self._np.frombuffer(out, dtype=self._np.float64).sum())
        else:
            row = self._np.asarray([features], dtype=self._np.float64)
            contrib = [float(c) for c in self.booster.predict(row, pred_contrib=True, num_threads=1)[0]]
            total = float(self._np.sum(contrib))
        raw = 1.0 / (1.0 + math.exp(-total))
        pd = min(1.0, max(0.0, self.calibration(raw)))
        top = sorted(((float(c), i) for i, c in enumerate(contrib[:-1]) if c > 0), reverse=True)[:TOP_REASONS]
        reasons = [feature_reason(FEATURE_NAMES[i], features[i]) for _, i in top]
        return Score(pd, reasons, self._version)
