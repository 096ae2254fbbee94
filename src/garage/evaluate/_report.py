"""Serialising results: the metrics JSON and the per-type TSV (schemas in docs/developer.md)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd


def jsonable(x):
    """numpy scalars -> python, NaN/inf -> None, recursively."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        v = float(x)
        return v if math.isfinite(v) else None
    return x


def metrics_json(doc: dict) -> str:
    return json.dumps(jsonable(doc), indent=2, allow_nan=False) + "\n"


def per_type_tsv(table: pd.DataFrame) -> str:
    out = table.copy()
    for col in ("is_rare", "missing"):
        out[col] = out[col].map({True: "true", False: "false"})
    return out.to_csv(sep="\t", index=False, na_rep="NA", float_format="%.6g")


def per_condition_tsv(table: pd.DataFrame) -> str:
    return table.to_csv(sep="\t", index=False, na_rep="NA", float_format="%.6g")
