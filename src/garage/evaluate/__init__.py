"""Stage 4: how close are the synthetic cells to real ones, per type, and how private?

Every metric is computed twice in one shared space (log-normalised HVGs ->
PCA fitted on real train cells): synthetic vs real holdout (the value) and real
train vs real holdout (the control).  Subsampled metrics use balanced
subsamples (the same n cells from each side), repeated ``n_repeats`` times with
fixed seeds, and report mean and standard deviation.  See docs/metrics.md.

Library API
-----------
``run_evaluate(real, synthetic, outdir, prefix, config)`` reads the files and
writes ``PREFIX.garage_metrics.json``, ``PREFIX.per_type.tsv``,
``PREFIX.umap.png`` and ``PREFIX.per_type.png`` atomically (all or none).
``evaluate_adata(real, synthetic, config)`` does the same in memory and returns
the metrics document (plus ``per_type`` as a DataFrame).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

from .. import __version__
from .. import constants as C
from .._utils import atomic_path, check_writable_dir, versions
from ..errors import GarageError
from ._config import TEST_OVERRIDES, EvaluateConfig
from ._core import BETTER, METRIC_NAMES, Result, evaluate_space, params_of
from ._per_type import PER_TYPE_COLUMNS
from ._plots import SUFFIX_PER_TYPE_PLOT, SUFFIX_UMAP
from ._space import build_space, check_real, check_synthetic

logger = logging.getLogger(__name__)

__all__ = [
    "EvaluateConfig",
    "TEST_OVERRIDES",
    "run_evaluate",
    "evaluate_adata",
    "METRIC_NAMES",
    "BETTER",
    "PER_TYPE_COLUMNS",
    "SUFFIX_UMAP",
    "SUFFIX_PER_TYPE_PLOT",
]


def _prepare(real, synthetic, config: EvaluateConfig):
    config.validate()
    check_real(real)
    synthetic = check_synthetic(real, synthetic)
    t0 = time.perf_counter()
    space = build_space(real, synthetic, config.n_pcs, config.seed, config.pca_fit_fraction)
    logger.info("evaluate: shared space built in %.1fs", time.perf_counter() - t0)
    return space


def _document(result: Result, space, config: EvaluateConfig, sample: str, extra: dict) -> dict:
    params = params_of(config) | {"n_pcs_used": space.n_pcs, "subsample": result.subsample}
    return {
        "sample": sample,
        "garage_version": __version__,
        "versions": versions(),
        "params": params | extra,
        "n_cells": result.n_cells,
        "metrics": result.metrics,
        "rare_types": result.rare_types,
        "missing_types": result.missing_types,
        "timings_s": result.timings,
    }


def _sample_of(real, sample: str | None) -> str:
    if sample:
        return str(sample)
    uns = real.uns.get(C.UNS_KEY, {}) if hasattr(real, "uns") else {}
    return str(uns.get("sample", "") or "sample")


def _threads(threads: int | None):
    """Cap BLAS/OpenMP threads: evaluation is many small linear-algebra calls, where
    extra threads mostly add overhead (8x slower logistic regression on a busy
    2-core machine)."""
    if threads is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=max(1, int(threads)))


def evaluate_adata(
    real,
    synthetic,
    config: EvaluateConfig | None = None,
    *,
    sample: str | None = None,
    threads: int | None = 1,
) -> dict:
    """Evaluate in memory (no files, no plots).

    Parameters
    ----------
    real
        A GARAGE preprocessed AnnData (``layers['counts']``, ``obs['garage_label']``,
        ``obs['garage_split']``).
    synthetic
        Synthetic cells: ``X`` integer counts over the same genes, ``obs['cell_type']``.
    config
        :class:`EvaluateConfig` (defaults if ``None``).
    sample
        Sample id recorded in the document (default: ``real.uns['garage']['sample']``).
    threads
        BLAS/OpenMP threads while evaluating (``None``: the libraries' default).

    Returns
    -------
    dict
        The ``PREFIX.garage_metrics.json`` document, plus ``per_type`` (a DataFrame
        with the ``PREFIX.per_type.tsv`` columns).
    """
    config = config or EvaluateConfig()
    with _threads(threads):
        space = _prepare(real, synthetic, config)
        result = evaluate_space(space, config)
    doc = _document(result, space, config, _sample_of(real, sample), {})
    doc["per_type"] = result.per_type
    return doc


def _read(path: Path, what: str):
    import anndata as ad

    path = Path(path)
    if not path.exists():
        raise GarageError(f"{what} file {path} does not exist", "check the path")
    if path.is_dir() or not path.name.endswith(".h5ad"):
        raise GarageError(f"{what} file {path.name} is not an .h5ad file", "pass an .h5ad file")
    try:
        return ad.read_h5ad(path)
    except Exception as exc:  # truncated/corrupt files surface as many types
        msg = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise GarageError(
            f"could not read {what} file {path.name}: {type(exc).__name__}: {msg}",
            "check that the file is complete (rerun the stage that wrote it)",
        ) from None


def output_paths(outdir: Path, prefix: str, plots: bool = True) -> dict[str, Path]:
    outdir = Path(outdir)
    out = {
        "metrics": outdir / f"{prefix}{C.SUFFIX_METRICS}",
        "per_type": outdir / f"{prefix}{C.SUFFIX_PER_TYPE}",
    }
    if plots:
        out["umap"] = outdir / f"{prefix}{SUFFIX_UMAP}"
        out["per_type_plot"] = outdir / f"{prefix}{SUFFIX_PER_TYPE_PLOT}"
    return out


def run_evaluate(
    real: Path,
    synthetic: Path,
    outdir: Path,
    prefix: str,
    config: EvaluateConfig | None = None,
    *,
    threads: int | None = 1,
) -> dict[str, Path]:
    """Read, evaluate, and write every output atomically (all files or none).

    ``threads`` caps BLAS/OpenMP threads (``None``: the libraries' default).

    Returns
    -------
    dict
        ``metrics``, ``per_type`` and, with ``config.plots``, ``umap`` and
        ``per_type_plot`` paths.
    """
    import numpy as np

    from ._plots import plot_per_type, plot_umap
    from ._report import metrics_json, per_type_tsv

    config = config or EvaluateConfig()
    config.validate()
    if not prefix or "/" in prefix:
        raise GarageError(f"invalid --prefix {prefix!r}", "pass a sample id without '/'")
    t_start = time.perf_counter()
    outdir = check_writable_dir(Path(outdir))
    paths = output_paths(outdir, prefix, config.plots)
    inputs = {Path(real).resolve(), Path(synthetic).resolve()}
    if any(p.resolve() in inputs for p in paths.values()):
        raise GarageError("an output would overwrite an input", "choose another --outdir or --prefix")

    logger.info("evaluate: reading %s and %s", real, synthetic)
    real_ad = _read(real, "real")
    check_real(real_ad)
    syn_ad = _read(synthetic, "synthetic")
    with _threads(threads):
        space = _prepare(real_ad, syn_ad, config)
        del syn_ad
        result = evaluate_space(space, config)
    doc = _document(
        result, space, config, prefix, {"real": Path(real).name, "synthetic": Path(synthetic).name}
    )

    with contextlib.ExitStack() as stack:
        tmp = {k: stack.enter_context(atomic_path(p)) for k, p in paths.items()}
        tmp["per_type"].write_text(per_type_tsv(result.per_type))
        if config.plots:
            t0 = time.perf_counter()
            logger.info("evaluate: plots ...")
            L, P = space.labels, space.pca
            rng = np.random.default_rng([config.seed, 7])
            n_real = len(L["train"]) + len(L["holdout"])
            m = int(min(n_real, space.n("synthetic"), config.umap_max_cells))
            ri = rng.permutation(n_real)[:m]
            si = rng.permutation(space.n("synthetic"))[:m]
            real_x = np.r_[P["train"], P["holdout"]][ri]
            real_l = np.r_[L["train"], L["holdout"]][ri]
            plot_umap(
                tmp["umap"], real_x, real_l, P["synthetic"][si], L["synthetic"][si],
                list(result.per_type["cell_type"]), seed=config.seed,
                title=f"{prefix}: real vs synthetic cells (shared PCA space)",
            )
            plot_per_type(
                tmp["per_type_plot"], result.per_type, result.holdout_recall,
                title=f"{prefix}: per-type composition and agreement",
            )
            doc["timings_s"]["plots"] = round(time.perf_counter() - t0, 3)
        doc["timings_s"]["total"] = round(time.perf_counter() - t_start, 3)
        tmp["metrics"].write_text(metrics_json(doc))
        umask = os.umask(0)
        os.umask(umask)
        for t in tmp.values():  # mkstemp makes 0600 files; outputs are shared results
            os.chmod(t, 0o666 & ~umask)
    m = doc["metrics"]
    logger.info(
        "evaluate: wrote %s (c2st_auc %.3f vs control %.3f; %d rare, %d missing types) in %.1fs",
        paths["metrics"], m["c2st_auc"]["value"] or float("nan"),
        m["c2st_auc"]["control"] or float("nan"), len(doc["rare_types"]),
        len(doc["missing_types"]), doc["timings_s"]["total"],
    )
    return paths
