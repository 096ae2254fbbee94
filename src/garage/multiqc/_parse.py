"""Parse ``garage evaluate`` outputs for the MultiQC module (no MultiQC import).

The schemas are fixed in ``docs/developer.md``:

* ``PREFIX.garage_metrics.json``: ``sample``, ``garage_version``, ``versions``,
  ``params``, ``n_cells``, ``metrics`` (name -> ``value``/``std``/``control``/
  ``control_std``/``better`` and, since the second wave, ``ci_low``/``ci_high``/
  ``control_ci_low``/``control_ci_high``/``n_real``), ``rare_types``,
  ``missing_types``, ``privacy_ok``, ``privacy_reasons``, ``privacy_notes``,
  ``privacy_unchecked_types``, ``rare_n_real_holdout`` and, with a condition,
  ``conditions``.
* ``PREFIX.per_type.tsv``: ``cell_type, n_real_train, n_real_holdout,
  n_synthetic, frac_real, frac_synthetic, agreement, mmd, is_rare, missing``
  then the appended diagnosis columns (``constants.PER_TYPE_COLUMNS``).
* ``PREFIX.per_condition.tsv``: ``constants.PER_CONDITION_COLUMNS``.

Files written before the second wave lack the newer fields; that is not a problem.

Parsing is forgiving about *partial* files (a missing metric, a ``null``, a
non-numeric value, an unknown key): what is usable is kept and every problem is
returned as a message, so the module can warn for that sample and go on.  Only a
file with nothing usable at all raises :class:`MetricsParseError`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from .. import constants as C

Better = Literal["higher", "lower", "closer to 0.5", "closer to 1", "closer to control", "zero"]
BETTER_VALUES: tuple[str, ...] = (
    "higher",
    "lower",
    "closer to 0.5",
    "closer to 1",
    "closer to control",
    "zero",
)

#: the contract shared with garage evaluate (docs/developer.md)
METRIC_NAMES: tuple[str, ...] = C.METRIC_NAMES
PRIVACY_METRICS: tuple[str, ...] = C.PRIVACY_METRICS
PER_TYPE_COLUMNS: tuple[str, ...] = C.PER_TYPE_COLUMNS
#: metrics added by the second wave: older files lack them without being incomplete
NEWER_METRICS: frozenset[str] = frozenset(
    {"rare_spread_ratio", "rare_dcr_ratio", "seed_mia_auc", "seed_nn_share"}
)
#: the original columns every per-type table has; later ones are optional
_PER_TYPE_CORE = PER_TYPE_COLUMNS[:10]
_PER_TYPE_INT = ("n_real_train", "n_real_holdout", "n_synthetic", "c2st_n")
_PER_TYPE_BOOL = ("is_rare", "missing")
_PER_TYPE_FLOAT = tuple(
    c for c in PER_TYPE_COLUMNS if c not in ("cell_type",) + _PER_TYPE_INT + _PER_TYPE_BOOL
)
_ENTRY_NUMBERS = ("value", "std", "control", "control_std", "ci_low", "ci_high",
                  "control_ci_low", "control_ci_high", "n_real")
N_CELLS_KEYS: tuple[str, ...] = ("real_train", "real_holdout", "synthetic")


class MetricsParseError(ValueError):
    """A GARAGE output file with nothing usable in it (not JSON, wrong shape, empty)."""


@dataclass(frozen=True)
class MetricValue:
    """One metric of one sample: the synthetic value next to its real-vs-real control."""

    value: float | None
    std: float | None = None
    control: float | None = None
    control_std: float | None = None
    better: str | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    control_ci_low: float | None = None
    control_ci_high: float | None = None
    n_real: float | None = None


@dataclass(frozen=True)
class SampleMetrics:
    """Everything the report uses from one ``PREFIX.garage_metrics.json``."""

    sample: str | None
    garage_version: str | None
    versions: dict[str, str]
    params: dict[str, Any]
    n_cells: dict[str, int]
    metrics: dict[str, MetricValue]
    rare_types: tuple[str, ...]
    missing_types: tuple[str, ...]
    problems: tuple[str, ...] = field(default=())
    privacy_ok: bool | None = None
    privacy_reasons: tuple[str, ...] = field(default=())
    privacy_notes: tuple[str, ...] = field(default=())
    #: types with synthetic cells on which a per-type or seed privacy check could not run
    privacy_unchecked_types: tuple[str, ...] = field(default=())
    rare_n_real_holdout: dict[str, int] = field(default_factory=dict)
    conditions: dict[str, Any] | None = None


def _number(x: Any) -> float | None:
    """A finite float, or None for null/NaN/inf.  Raises ValueError for anything else."""
    if x is None:
        return None
    if isinstance(x, bool):
        raise ValueError(f"{x!r} is a boolean, not a number")
    if isinstance(x, (int, float)):
        v = float(x)
    elif isinstance(x, str):
        s = x.strip()
        if s.lower() in ("", "na", "nan", "null", "none"):
            return None
        v = float(s)
    else:
        raise ValueError(f"{x!r} is not a number")
    return v if math.isfinite(v) else None


def parse_metrics_json(text: str | None) -> SampleMetrics:
    """Parse the text of a ``PREFIX.garage_metrics.json`` file.

    Parameters
    ----------
    text
        File contents.

    Returns
    -------
    SampleMetrics
        With ``problems`` listing every part that was skipped.

    Raises
    ------
    MetricsParseError
        If the text is not a JSON object or holds no usable metric and no cell counts.
    """
    if text is None or not text.strip():
        raise MetricsParseError("file is empty")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MetricsParseError(
            f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            "the file may be truncated"
        ) from None
    if not isinstance(doc, dict):
        raise MetricsParseError(f"expected a JSON object, found {type(doc).__name__}")

    problems: list[str] = []

    sample = doc.get("sample")
    if sample is not None and not isinstance(sample, str):
        sample = str(sample)
    if isinstance(sample, str) and not sample.strip():
        sample = None
    if sample is None:
        problems.append("no 'sample' field; using the file name")

    gv = doc.get("garage_version")
    garage_version = str(gv) if gv not in (None, "") else None

    versions: dict[str, str] = {}
    raw_versions = doc.get("versions", {})
    if isinstance(raw_versions, dict):
        versions = {str(k): str(v) for k, v in raw_versions.items() if v not in (None, "")}
    elif raw_versions is not None:
        problems.append("'versions' is not an object; software versions skipped")

    params = doc.get("params", {})
    if not isinstance(params, dict):
        problems.append("'params' is not an object; skipped")
        params = {}

    n_cells: dict[str, int] = {}
    raw_n = doc.get("n_cells", {})
    if isinstance(raw_n, dict):
        for key, val in raw_n.items():
            try:
                num = _number(val)
            except ValueError:
                problems.append(f"n_cells.{key} = {val!r} is not a number; skipped")
                continue
            if num is not None:
                n_cells[str(key)] = int(num)
    elif raw_n is not None:
        problems.append("'n_cells' is not an object; skipped")
    missing_n = [k for k in N_CELLS_KEYS if k not in n_cells]
    if missing_n:
        problems.append("n_cells lacks " + ", ".join(missing_n))

    metrics: dict[str, MetricValue] = {}
    raw_metrics = doc.get("metrics")
    if raw_metrics is None:
        problems.append("no 'metrics' object")
        raw_metrics = {}
    elif not isinstance(raw_metrics, dict):
        problems.append("'metrics' is not an object; skipped")
        raw_metrics = {}
    for name, entry in raw_metrics.items():
        name = str(name)
        if isinstance(entry, (int, float)) and not isinstance(entry, bool):
            entry = {"value": entry}  # tolerate a bare number
        if not isinstance(entry, dict):
            problems.append(f"metric {name!r} is not an object; skipped")
            continue
        parsed: dict[str, float | None] = {}
        bad = False
        for key in _ENTRY_NUMBERS:
            try:
                parsed[key] = _number(entry.get(key))
            except ValueError:
                problems.append(f"{name}.{key} = {entry.get(key)!r} is not a number; skipped")
                bad = bad or key == "value"
                parsed[key] = None
        if bad:
            continue
        better = entry.get("better")
        if better is not None and better not in BETTER_VALUES:
            problems.append(f"{name}.better = {better!r} is not one of {', '.join(BETTER_VALUES)}")
            better = None
        metrics[name] = MetricValue(better=better, **parsed)
    absent = [m for m in METRIC_NAMES if m not in metrics and m not in NEWER_METRICS]
    if absent and len(absent) < len(METRIC_NAMES) - len(NEWER_METRICS):
        problems.append("metrics missing: " + ", ".join(absent))

    def _names(key: str) -> tuple[str, ...]:
        raw = doc.get(key, [])
        if raw is None:
            return ()
        if not isinstance(raw, list):
            problems.append(f"'{key}' is not a list; skipped")
            return ()
        return tuple(str(x) for x in raw)

    rare_types = _names("rare_types")
    missing_types = _names("missing_types")
    privacy_reasons = _names("privacy_reasons")
    privacy_notes = _names("privacy_notes")
    privacy_unchecked_types = _names("privacy_unchecked_types")
    privacy_ok = doc.get("privacy_ok")
    if privacy_ok is not None and not isinstance(privacy_ok, bool):
        problems.append(f"'privacy_ok' = {privacy_ok!r} is not true/false; skipped")
        privacy_ok = None
    rare_n: dict[str, int] = {}
    raw_rn = doc.get("rare_n_real_holdout") or {}
    if isinstance(raw_rn, dict):
        for key, val in raw_rn.items():
            try:
                num = _number(val)
            except ValueError:
                continue
            if num is not None:
                rare_n[str(key)] = int(num)
    conditions = doc.get("conditions")
    if conditions is not None and not isinstance(conditions, dict):
        problems.append("'conditions' is not an object; skipped")
        conditions = None

    if not metrics and not n_cells:
        raise MetricsParseError(
            "no usable metrics and no cell counts ("
            + "; ".join(problems or ["empty object"])
            + ")"
        )
    return SampleMetrics(
        sample=sample,
        garage_version=garage_version,
        versions=versions,
        params=params,
        n_cells=n_cells,
        metrics=metrics,
        rare_types=rare_types,
        missing_types=missing_types,
        problems=tuple(problems),
        privacy_ok=privacy_ok,
        privacy_reasons=privacy_reasons,
        privacy_notes=privacy_notes,
        privacy_unchecked_types=privacy_unchecked_types,
        rare_n_real_holdout=rare_n,
        conditions=conditions,
    )


def _bool(x: str) -> bool | None:
    s = x.strip().lower()
    if s in ("true", "1", "yes", "t"):
        return True
    if s in ("false", "0", "no", "f"):
        return False
    if s in ("", "na", "nan", "none", "null"):
        return None
    raise ValueError(f"{x!r} is not a boolean")


def parse_per_type_tsv(text: str | None) -> tuple[list[dict[str, Any]], list[str]]:
    """Parse the text of a ``PREFIX.per_type.tsv`` file.

    Returns
    -------
    rows, problems
        One dict per cell type (only the known columns, typed; a bad cell becomes
        ``None`` and a problem message).

    Raises
    ------
    MetricsParseError
        If there is no header with ``cell_type`` or no data row.
    """
    if text is None or not text.strip():
        raise MetricsParseError("file is empty")
    reader = csv.DictReader(io.StringIO(text), delimiter="\t")
    header = [h.strip() for h in (reader.fieldnames or [])]
    if "cell_type" not in header:
        raise MetricsParseError(
            "no 'cell_type' column in the header (expected tab-separated columns "
            + ", ".join(PER_TYPE_COLUMNS)
            + ")"
        )
    reader.fieldnames = header
    problems: list[str] = []
    absent = [c for c in _PER_TYPE_CORE if c not in header]
    if absent:
        problems.append("columns missing: " + ", ".join(absent))
    rows: list[dict[str, Any]] = []
    for lineno, raw in enumerate(reader, start=2):
        ct = (raw.get("cell_type") or "").strip()
        if not ct:
            problems.append(f"line {lineno}: empty cell_type; row skipped")
            continue
        row: dict[str, Any] = {"cell_type": ct}
        for col in _PER_TYPE_INT + _PER_TYPE_FLOAT:
            if col not in header:
                continue
            try:
                v = _number(raw.get(col))
            except ValueError:
                problems.append(f"line {lineno}: {col} = {raw.get(col)!r} is not a number")
                v = None
            if v is not None and col in _PER_TYPE_INT:
                v = int(round(v))
            row[col] = v
        for col in _PER_TYPE_BOOL:
            if col not in header:
                continue
            try:
                row[col] = _bool(raw.get(col) or "")
            except ValueError as exc:
                problems.append(f"line {lineno}: {col}: {exc}")
                row[col] = None
        rows.append(row)
    if not rows:
        raise MetricsParseError("header only, no cell-type rows")
    return rows, problems


_PER_CONDITION_TEXT = ("condition", "reference", "cell_type", "metric", "better")


def parse_per_condition_tsv(text: str | None) -> tuple[list[dict[str, Any]], list[str]]:
    """Parse the text of a ``PREFIX.per_condition.tsv`` file (rows typed, problems listed).

    Raises
    ------
    MetricsParseError
        If the header lacks ``condition`` or ``metric``, or there is no data row.
    """
    if text is None or not text.strip():
        raise MetricsParseError("file is empty")
    reader = csv.DictReader(io.StringIO(text), delimiter="\t")
    header = [h.strip() for h in (reader.fieldnames or [])]
    if "condition" not in header or "metric" not in header:
        raise MetricsParseError(
            "no 'condition'/'metric' columns (expected " + ", ".join(C.PER_CONDITION_COLUMNS) + ")"
        )
    reader.fieldnames = header
    problems: list[str] = []
    rows: list[dict[str, Any]] = []
    for lineno, raw in enumerate(reader, start=2):
        row: dict[str, Any] = {}
        for col in header:
            val = (raw.get(col) or "").strip()
            if col in _PER_CONDITION_TEXT:
                row[col] = "" if val in ("NA",) else val
                continue
            try:
                row[col] = _number(val)
            except ValueError:
                problems.append(f"line {lineno}: {col} = {val!r} is not a number")
                row[col] = None
        if not row.get("condition") or not row.get("metric"):
            problems.append(f"line {lineno}: empty condition or metric; row skipped")
            continue
        rows.append(row)
    if not rows:
        raise MetricsParseError("header only, no rows")
    return rows, problems
