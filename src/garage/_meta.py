"""What preprocess decides once and every later stage reads from ``uns['garage']``.

Rarity is one of those decisions: a type is rare when it holds less than
``rare_threshold`` of all cells after QC.  Preprocess writes the list; GAT
quotas, GAN compositions, evaluate and the MultiQC report read it through
:func:`rare_types_of`, so no two stages can disagree on it.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from . import constants as C

logger = logging.getLogger(__name__)


def decide_rare_types(labels, threshold: float) -> list[str]:
    """Types holding less than *threshold* of the cells in *labels* (sorted)."""
    lab = pd.Series(np.asarray(labels, dtype=object).astype(str))
    frac = lab.value_counts(normalize=True)
    return sorted(str(t) for t, f in frac.items() if f < threshold)


def _as_list(value) -> list[str]:
    if value is None or isinstance(value, str):
        return [value] if value else []
    return [str(v) for v in np.asarray(value, dtype=object).ravel().tolist()]


def rare_types_of(adata, threshold: float | None = None) -> list[str]:
    """The rare types preprocess decided for *adata* (``uns['garage']['rare_types']``).

    A file written before preprocess recorded the list (or not by GARAGE at all)
    falls back to deciding it here from ``obs['garage_label']`` with *threshold*
    (default ``constants.RARE_THRESHOLD``), with a warning.
    """
    uns = adata.uns.get(C.UNS_KEY, {}) if hasattr(adata, "uns") else {}
    if C.UNS_RARE_TYPES in uns:
        return sorted(_as_list(uns[C.UNS_RARE_TYPES]))
    thr = C.RARE_THRESHOLD if threshold is None else float(threshold)
    logger.warning("input has no uns['%s']['%s'] (written by `garage preprocess`); deciding rare types "
                   "here with threshold %.3g", C.UNS_KEY, C.UNS_RARE_TYPES, thr)
    return decide_rare_types(adata.obs[C.OBS_LABEL], thr)


def condition_key_of(adata) -> str | None:
    """The user's condition column name recorded by preprocess, or None."""
    uns = adata.uns.get(C.UNS_KEY, {}) if hasattr(adata, "uns") else {}
    key = uns.get(C.UNS_CONDITION_KEY, "")
    return str(key) if key and C.OBS_CONDITION in adata.obs else None


def label_key_of(adata) -> str | None:
    """The user's label column name recorded by preprocess (None for Leiden labels)."""
    uns = adata.uns.get(C.UNS_KEY, {}) if hasattr(adata, "uns") else {}
    key = uns.get(C.UNS_LABEL_KEY, "")
    return str(key) if key else None
