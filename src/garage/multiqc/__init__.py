"""The GARAGE MultiQC plugin and :func:`run_report`, the ``report`` stage.

MultiQC finds the plugin through the entry points in pyproject.toml
(``multiqc.modules.v1: garage`` and ``multiqc.hooks.v1: execution_start``), so
``multiqc results/`` picks up ``PREFIX.garage_metrics.json`` and
``PREFIX.per_type.tsv`` with no extra configuration.

MultiQC imports :mod:`garage.multiqc.hooks` while it is itself being imported,
so this package must not import MultiQC at module level.
"""

from __future__ import annotations

from pathlib import Path

from ._report import DEFAULT_CONFIG, run_report

__all__ = ["DEFAULT_CONFIG", "run_report"]
