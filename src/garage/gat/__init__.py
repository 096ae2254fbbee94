"""Stage 1: GAT seed selection with explicit rare-type priority.

A multi-head GAT (PyG ``GATConv``) is trained on the kNN graph for node
classification of ``obs['garage_label']`` with a class-balanced loss.  Each
cell's representativeness score combines attention centrality, read from the
real attention coefficients ``alpha`` that ``GATConv`` returns, with the
classifier's confidence (see :mod:`garage.gat._score` for the formula).  Seeds
are chosen per type: rare types (the list ``garage preprocess`` decided,
``uns['garage']['rare_types']``) get a guaranteed quota, the others quotas in
proportion; ``seed_strategy`` fills each quota in score order, at random (the
ablation) or for coverage of the type's manifold (see :mod:`garage.gat._seeds`).

Public API: :class:`GATConfig`, :data:`TEST_OVERRIDES`, :func:`run_gat` (files),
:func:`gat_adata` (in memory), :func:`load_gat`.
"""

from __future__ import annotations

from ._config import OBS_SEED_REGION, TEST_OVERRIDES, GATConfig

__all__ = [
    "GATConfig",
    "TEST_OVERRIDES",
    "OBS_SEED_REGION",
    "run_gat",
    "gat_adata",
    "load_gat",
    "GATResult",
    "SCORE_FORMULA",
    "SCORE_FORMULAS",
]


def __getattr__(name: str):
    # torch / torch_geometric are imported only when the stage is actually used
    if name in ("run_gat", "gat_adata", "load_gat", "GATResult", "SCORE_FORMULA",
                "SCORE_FORMULAS"):
        from . import _run

        return getattr(_run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
