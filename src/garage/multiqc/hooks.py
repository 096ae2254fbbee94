"""MultiQC plugin hook: teach MultiQC where GARAGE outputs are.

Registered in pyproject.toml as ``multiqc.hooks.v1: execution_start``.  MultiQC
imports this module while it is itself being imported, so nothing here imports
MultiQC (or anything heavy) at module level.
"""

from __future__ import annotations

from ..constants import (
    SUFFIX_METRICS,
    SUFFIX_PER_CONDITION,
    SUFFIX_PER_TYPE,
    SUFFIX_PER_TYPE_PLOT,
    SUFFIX_UMAP,
)

#: Search-pattern keys used by :class:`garage.multiqc.module.MultiqcModule`.
SP_METRICS = "garage/metrics"
SP_PER_TYPE = "garage/per_type"
SP_PER_CONDITION = "garage/per_condition"
SP_UMAP = "garage/umap"
SP_PER_TYPE_PLOT = "garage/per_type_plot"

SEARCH_PATTERNS: dict[str, dict[str, str]] = {
    SP_METRICS: {"fn": f"*{SUFFIX_METRICS}"},
    SP_PER_TYPE: {"fn": f"*{SUFFIX_PER_TYPE}"},
    SP_PER_CONDITION: {"fn": f"*{SUFFIX_PER_CONDITION}"},
    SP_UMAP: {"fn": f"*{SUFFIX_UMAP}"},
    SP_PER_TYPE_PLOT: {"fn": f"*{SUFFIX_PER_TYPE_PLOT}"},
}


def execution_start() -> None:
    """Add the GARAGE search patterns unless a user config already set them.

    The GARAGE module is not listed in MultiQC's built-in ``module_order``, so
    MultiQC runs it before the built-in modules; its section then opens the
    report, which is where a GARAGE run's results belong.
    """
    from multiqc import config

    missing = {k: v for k, v in SEARCH_PATTERNS.items() if k not in config.sp}
    if missing:
        config.update_dict(config.sp, missing)
