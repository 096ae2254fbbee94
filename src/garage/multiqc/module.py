"""Entry point of the GARAGE MultiQC module (``multiqc.modules.v1: garage``).

The implementation lives in :mod:`garage.multiqc.garage`, so MultiQC's console
log (which prints the Python file name) labels its lines ``garage``.
"""

from __future__ import annotations

from .garage import MultiqcModule

__all__ = ["MultiqcModule"]
