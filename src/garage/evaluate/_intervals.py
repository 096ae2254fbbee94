"""Intervals: how a metric's draws become value, std and a 95% interval, and how to read them.

Every resampled metric is computed on ``B`` draws of the real cells (``n_repeats``):
random halves of the real holdout (delete-half jackknife, Shao & Wu 1989) for the
two-sample metrics, stratified bootstrap resamples (Efron & Tibshirani 1993) for the
classifier, per-type and seed metrics.  From the ``B`` numbers:

* ``value`` is the statistic on all the cells (two-sample metrics: the mean over a
  few draws of the full-size comparison) or, for bootstrap metrics, the mean of the
  draws; ``std`` is the draws' standard deviation, the resampling standard error;
* the 95% interval is ``value ± t(0.975, B - 1) * std`` (Student's t, because ``std``
  itself rests on only ``B`` draws), clipped to the metric's range.

This module has no heavy imports: the MultiQC plugin uses :func:`differs` and
:func:`verdict` to print "no difference" for a difference inside the intervals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

#: the range each metric can take (intervals are clipped to it); default: unbounded
BOUNDS: dict[str, tuple[float, float]] = {
    "c2st_auc": (0.0, 1.0),
    "mia_auc": (0.0, 1.0),
    "seed_mia_auc": (0.0, 1.0),
    "seed_nn_share": (0.0, 1.0),
    "mean_corr": (-1.0, 1.0),
    "var_corr": (-1.0, 1.0),
    "zero_frac_corr": (-1.0, 1.0),
    "condition_lfc_corr": (-1.0, 1.0),
    "libsize_ks": (0.0, 1.0),
    "ari": (-1.0, 1.0),
    "nmi": (0.0, 1.0),
    "rare_agreement": (0.0, 1.0),
    "type_agreement": (0.0, 1.0),
    "agreement": (0.0, 1.0),
    "c2st": (0.0, 1.0),
    "tstr_macro_f1": (0.0, 1.0),
    "tstr_rare_f1": (0.0, 1.0),
    "augment_macro_f1": (0.0, 1.0),
    "wasserstein_pca": (0.0, math.inf),
    "dcr_ratio": (0.0, math.inf),
    "nndr_ratio": (0.0, math.inf),
    "rare_dcr_ratio": (0.0, math.inf),
    "rare_spread_ratio": (0.0, math.inf),
    "spread_ratio": (0.0, math.inf),
}

# two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom (then 1.96 + ...)
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
    2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
    2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with *df* degrees of freedom (df >= 1)."""
    if df < 1:
        return math.nan
    if df <= len(_T975):
        return _T975[df - 1]
    return 1.96 + 2.4 / df  # within 0.002 of the exact value for df > 30


def _finite(vals: Sequence[float | None]) -> list[float]:
    out = []
    for v in vals:
        if v is None:
            continue
        v = float(v)
        if math.isfinite(v):
            out.append(v)
    return out


def summarise(
    draws: Sequence[float | None], name: str | None = None, point: float | None = None
) -> tuple[float | None, float | None, float | None, float | None]:
    """``(value, std, ci_low, ci_high)`` of one metric's draws (None where undefined).

    *point*, when given, is the value (e.g. the statistic on the whole holdout) and
    the draws only give its standard error; otherwise the value is the draws' mean.
    One finite draw gives no spread and no interval (``std`` None).
    """
    x = _finite(draws)
    if point is not None and not math.isfinite(float(point)):
        point = None
    if not x:
        return (None if point is None else float(point)), None, None, None
    mean = sum(x) / len(x) if point is None else float(point)
    if len(x) < 2:
        return mean, None, None, None
    m = sum(x) / len(x)
    sd = math.sqrt(sum((v - m) ** 2 for v in x) / (len(x) - 1))
    half = t975(len(x) - 1) * sd
    lo, hi = BOUNDS.get(name or "", (-math.inf, math.inf))
    return mean, sd, max(lo, mean - half), min(hi, mean + half)


def entry(
    name: str,
    draws: Sequence[float | None],
    control_draws: Sequence[float | None],
    better: str,
    n_real: int | None = None,
    point: float | None = None,
    control_point: float | None = None,
) -> dict:
    """One metric entry of the metrics JSON (fields in ``constants.METRIC_FIELDS`` order)."""
    v, vs, vlo, vhi = summarise(draws, name, point)
    c, cs, clo, chi = summarise(control_draws, name, control_point)
    return {
        "value": v, "std": vs, "control": c, "control_std": cs, "better": better,
        "ci_low": vlo, "ci_high": vhi, "control_ci_low": clo, "control_ci_high": chi,
        "n_real": None if n_real is None else int(n_real),
    }


def _get(e, key):
    return e.get(key) if isinstance(e, Mapping) else getattr(e, key, None)


def differs(e) -> bool | None:
    """Whether a metric's value differs from its control beyond the intervals.

    True when the two 95% intervals do not overlap; False when they overlap (the
    difference is inside the intervals: "no difference"); None when an interval is
    missing.  Works on a metrics-JSON entry (a dict) or any object with the same
    attributes.  Non-overlap of two 95% intervals is a conservative test (about the
    0.5% level when both have the same width; Schenker & Gentleman 2001).
    """
    vals = [_get(e, k) for k in ("ci_low", "ci_high", "control_ci_low", "control_ci_high")]
    if any(v is None or not math.isfinite(float(v)) for v in vals):
        return None
    lo, hi, clo, chi = (float(v) for v in vals)
    return hi < clo or chi < lo


def verdict(e) -> str:
    """Plain words for a value next to its control.

    ``no difference`` (inside the intervals), ``worse than control``, ``better than
    control``, ``differs from control`` (for metrics whose ideal is the control
    itself), or ``no interval``.
    """
    d = differs(e)
    if d is None:
        return "no interval"
    if not d:
        return "no difference"
    v, c = float(_get(e, "value")), float(_get(e, "control"))
    better = _get(e, "better") or "closer to control"
    if better == "higher":
        good = v > c
    elif better in ("lower", "zero"):
        good = v < c
    elif better == "closer to 0.5":
        good = abs(v - 0.5) < abs(c - 0.5)
    elif better == "closer to 1":
        good = abs(v - 1.0) < abs(c - 1.0)
    else:
        return "differs from control"
    return "better than control" if good else "worse than control"
