"""Stage 4: how close are the synthetic cells to real ones, per type, and how private?

Every metric is computed twice in one shared space (log-normalised HVGs ->
PCA fitted on real train cells): synthetic vs real holdout (the value) and real
train vs real holdout (the control).  Subsampled metrics use balanced
subsamples (the same n cells from each side), repeated ``n_repeats`` times with
fixed seeds, and report mean and standard deviation.  See docs/metrics.md.

Library API
-----------
``run_evaluate(real, synthetic, outdir, prefix, config, seeds=None, provenance=None)``
reads the files and writes ``PREFIX.garage_metrics.json``, ``PREFIX.per_type.tsv``,
``PREFIX.per_condition.tsv`` (with a condition), ``PREFIX.umap.png`` and
``PREFIX.per_type.png`` atomically (all or none).
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
from ._intervals import differs, verdict
from ._memory import check_memory
from ._per_type import PER_TYPE_COLUMNS
from ._privacy import PRIVACY_THRESHOLDS
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
    "PRIVACY_THRESHOLDS",
    "differs",
    "verdict",
]


def _prepare(real, synthetic, config: EvaluateConfig, seeds=None, provenance=None):
    from ._seeds import attach, read_provenance, read_seed_names

    config.validate()
    check_real(real)
    synthetic = check_synthetic(real, synthetic)
    if seeds is None and C.OBS_SEED in real.obs.columns:
        logger.info("evaluate: the real file marks seed cells (obs['%s']); using them", C.OBS_SEED)
        seeds = real
    seed_names = read_seed_names(seeds)
    prov = read_provenance(provenance)
    t0 = time.perf_counter()
    space = build_space(real, synthetic, config.n_pcs, config.seed, config.pca_fit_fraction,
                        pca_max_cells=config.pca_max_cells, rare_threshold=config.rare_threshold)
    if seeds is not None or prov is not None:
        space.seed_inputs = tuple(k for k, v in (("seeds", seeds), ("provenance", prov))
                                  if v is not None)
        attach(space, seed_names, prov, synthetic.obs_names)
    logger.info("evaluate: shared space built in %.1fs", time.perf_counter() - t0)
    return space


def _document(result: Result, space, config: EvaluateConfig, sample: str, extra: dict) -> dict:
    params = params_of(config) | {
        "n_pcs_used": space.n_pcs, "subsample": result.subsample,
        "rare_types_source": space.rare_source,
        "seeds_given": space.seed is not None, "provenance_given": space.provenance is not None,
    }
    doc = {
        "sample": sample,
        "garage_version": __version__,
        "versions": versions(),
        "params": params | extra,
        "n_cells": result.n_cells,
        "metrics": result.metrics,
        "rare_types": result.rare_types,
        "rare_n_real_holdout": result.rare_n_real_holdout,
        "missing_types": result.missing_types,
        "privacy_ok": result.privacy_ok,
        "privacy_reasons": result.privacy_reasons,
        "privacy_notes": result.privacy_notes,
        "privacy_unchecked_types": result.privacy_unchecked_types,
        "timings_s": result.timings,
    }
    if result.conditions is not None:
        doc["conditions"] = result.conditions
    return doc


def _steps(real, synthetic, config: EvaluateConfig, *, plots: bool, seeds: bool):
    """The stage's progress, weighted by where evaluation's time goes (``_core.STEP_WEIGHTS``);
    a per-condition section counts once per condition level."""
    from .._meta import condition_key_of
    from ._core import step_progress

    n_cond = 0
    if (config.per_condition and condition_key_of(real) is not None
            and C.OBS_SYN_CONDITION in getattr(getattr(synthetic, "obs", None), "columns", ())):
        n_cond = int(real.obs[C.OBS_CONDITION].nunique())
    seeds = seeds or C.OBS_SEED in getattr(getattr(real, "obs", None), "columns", ())
    return step_progress(n_conditions=n_cond, plots=plots, seeds=seeds)


def _sample_of(real, sample: str | None) -> str:
    if sample:
        return str(sample)
    uns = real.uns.get(C.UNS_KEY, {}) if hasattr(real, "uns") else {}
    return str(uns.get("sample", "") or "sample")


def _threads(threads: int | None):
    """Cap BLAS/OpenMP threads: evaluation is many small linear-algebra calls, where
    extra threads mostly add overhead (8x slower logistic regression on a busy
    2-core machine; 30x slower neighbour searches).

    threadpoolctl only limits libraries that are already loaded, so the libraries
    whose thread pools evaluation uses (OpenBLAS through numpy/scipy, OpenMP
    through scikit-learn) are imported first.
    """
    if threads is None:
        return contextlib.nullcontext()
    import scipy.linalg  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import sklearn.neighbors  # noqa: F401
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=max(1, int(threads)))


def evaluate_adata(
    real,
    synthetic,
    config: EvaluateConfig | None = None,
    *,
    sample: str | None = None,
    threads: int | None = 1,
    seeds=None,
    provenance=None,
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
    seeds
        Seed cells: a ``PREFIX.seeds.h5ad`` path, an AnnData with ``obs['garage_seed']``,
        or a list of real obs names.  Enables ``seed_mia_auc``.
    provenance
        ``PREFIX.provenance.tsv`` path or a DataFrame with its columns.  Enables
        ``seed_nn_share`` (and the seed metrics, via the seeds it names).

    Returns
    -------
    dict
        The ``PREFIX.garage_metrics.json`` document, plus ``per_type`` (a DataFrame
        with the ``PREFIX.per_type.tsv`` columns) and, with a condition,
        ``per_condition`` (the ``PREFIX.per_condition.tsv`` table).
    """
    config = config or EvaluateConfig()
    with _steps(real, synthetic, config, plots=False,
                seeds=seeds is not None or provenance is not None) as steps, _threads(threads):
        steps.begin("space", announce=False)
        space = _prepare(real, synthetic, config, seeds, provenance)
        steps.end()
        result = evaluate_space(space, config, steps)
    doc = _document(result, space, config, _sample_of(real, sample), {})
    doc["per_type"] = result.per_type
    if result.per_condition is not None:
        doc["per_condition"] = result.per_condition
    return doc


def _check_h5ad_path(path: Path, what: str) -> None:
    path = Path(path)
    if not path.exists():
        raise GarageError(f"{what} file {path} does not exist", "check the path")
    if path.is_dir() or not path.name.endswith(".h5ad"):
        raise GarageError(f"{what} file {path.name} is not an .h5ad file", "pass an .h5ad file")


def _read(path: Path, what: str):
    """Read an .h5ad that :func:`_check_h5ad_path` accepted; a failure is one GarageError line."""
    import anndata as ad

    path = Path(path)
    try:
        return ad.read_h5ad(path)
    except Exception as exc:  # truncated/corrupt files surface as many types
        msg = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise GarageError(
            f"could not read {what} file {path.name}: {type(exc).__name__}: {msg}",
            "check that the file is complete (rerun the stage that wrote it)",
        ) from None


def output_paths(outdir: Path, prefix: str, plots: bool = True,
                 conditions: bool = False) -> dict[str, Path]:
    outdir = Path(outdir)
    out = {
        "metrics": outdir / f"{prefix}{C.SUFFIX_METRICS}",
        "per_type": outdir / f"{prefix}{C.SUFFIX_PER_TYPE}",
    }
    if conditions:
        out["per_condition"] = outdir / f"{prefix}{C.SUFFIX_PER_CONDITION}"
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
    seeds: Path | None = None,
    provenance: Path | None = None,
    max_memory_gb: float | None = None,
    available_bytes: int | None = None,
) -> dict[str, Path]:
    """Read, evaluate, and write every output atomically (all files or none).

    A pre-flight memory estimate from the two files' headers (``_memory.check_memory``) runs
    before either is read: over the budget (*max_memory_gb*, else *available_bytes*, else 90 %
    of the available memory) it raises a ``ResourceError`` (exit 3) and nothing is written.

    ``threads`` caps BLAS/OpenMP threads (``None``: the libraries' default).
    ``seeds`` (``PREFIX.seeds.h5ad``) and ``provenance`` (the PRIVATE
    ``PREFIX.provenance.tsv``) enable the seed-aware privacy metrics.

    Returns
    -------
    dict
        ``metrics``, ``per_type``, ``per_condition`` (real files with a condition)
        and, with ``config.plots``, ``umap`` and ``per_type_plot`` paths.
    """
    import numpy as np

    from ._plots import plot_per_type, plot_umap
    from ._report import metrics_json, per_condition_tsv, per_type_tsv

    config = config or EvaluateConfig()
    config.validate()
    if max_memory_gb is not None and not max_memory_gb > 0:
        raise GarageError(f"--max-memory-gb must be > 0, got {max_memory_gb}", "pass e.g. 16, or omit it")
    if not prefix or "/" in prefix:
        raise GarageError(f"invalid --prefix {prefix!r}", "pass a sample id without '/'")
    t_start = time.perf_counter()
    for path, what in ((seeds, "seeds"), (provenance, "provenance")):
        if path is not None and not Path(path).is_file():
            raise GarageError(f"{what} file {path} does not exist", "check the path")
    for path, what in ((real, "real"), (synthetic, "synthetic")):
        _check_h5ad_path(path, what)
    check_memory(Path(real), Path(synthetic), n_pcs=config.n_pcs, pca_max_cells=config.pca_max_cells,
                 pca_fit_fraction=config.pca_fit_fraction, max_memory_gb=max_memory_gb,
                 available_bytes=available_bytes)
    logger.info("evaluate: reading %s and %s", real, synthetic)
    real_ad = _read(real, "real")
    check_real(real_ad)
    from .._meta import condition_key_of

    has_cond = condition_key_of(real_ad) is not None
    outdir = check_writable_dir(Path(outdir))
    paths = output_paths(outdir, prefix, config.plots, has_cond)
    inputs = {Path(p).resolve() for p in (real, synthetic, seeds, provenance) if p is not None}
    if any(p.resolve() in inputs for p in paths.values()):
        raise GarageError("an output would overwrite an input", "choose another --outdir or --prefix")
    syn_ad = _read(synthetic, "synthetic")
    with _steps(real_ad, syn_ad, config, plots=config.plots,
                seeds=seeds is not None or provenance is not None) as steps:
        with _threads(threads):
            steps.begin("space", announce=False)
            space = _prepare(real_ad, syn_ad, config, seeds, provenance)
            steps.end()
            del syn_ad, real_ad
            result = evaluate_space(space, config, steps)
        extra = {"real": Path(real).name, "synthetic": Path(synthetic).name}
        if seeds is not None:
            extra["seeds"] = Path(seeds).name
        if provenance is not None:
            extra["provenance"] = Path(provenance).name
        doc = _document(result, space, config, prefix, extra)

        with contextlib.ExitStack() as stack:
            tmp = {k: stack.enter_context(atomic_path(p)) for k, p in paths.items()}
            tmp["per_type"].write_text(per_type_tsv(result.per_type))
            if "per_condition" in tmp:
                tmp["per_condition"].write_text(per_condition_tsv(result.per_condition))
            if config.plots:
                t0 = time.perf_counter()
                logger.info("evaluate: plots ...")
                steps.begin("plots", announce=False)
                L, P = space.labels, space.pca
                rng = np.random.default_rng([config.seed, 7])
                n_real = len(L["train"]) + len(L["holdout"])
                m = int(min(n_real, space.n("synthetic"), config.umap_max_cells))
                ri = rng.permutation(n_real)[:m]
                si = rng.permutation(space.n("synthetic"))[:m]
                real_x = np.r_[P["train"], P["holdout"]][ri]
                real_l = np.r_[L["train"], L["holdout"]][ri]
                cond = None
                K = space.conditions
                if K is not None:
                    cond = (np.r_[K["train"], K["holdout"]][ri],
                            K["synthetic"][si] if "synthetic" in K else None, space.condition_key)
                plot_umap(
                    tmp["umap"], real_x, real_l, P["synthetic"][si], L["synthetic"][si],
                    list(result.per_type["cell_type"]), seed=config.seed,
                    title=f"{prefix}: real vs synthetic cells (shared PCA space)", conditions=cond,
                )
                plot_per_type(
                    tmp["per_type_plot"], result.per_type, result.holdout_recall,
                    title=f"{prefix}: per-type composition and agreement",
                )
                doc["timings_s"]["plots"] = round(time.perf_counter() - t0, 3)
                steps.end()
            doc["timings_s"]["total"] = round(time.perf_counter() - t_start, 3)
            tmp["metrics"].write_text(metrics_json(doc))
            umask = os.umask(0)
            os.umask(umask)
            for t in tmp.values():  # mkstemp makes 0600 files; outputs are shared results
                os.chmod(t, 0o666 & ~umask)
    m = doc["metrics"]
    logger.info(
        "evaluate: wrote %s (c2st_auc %.3f vs control %.3f; %d rare, %d missing types; "
        "privacy_ok %s) in %.1fs",
        paths["metrics"], m["c2st_auc"]["value"] or float("nan"),
        m["c2st_auc"]["control"] or float("nan"), len(doc["rare_types"]),
        len(doc["missing_types"]), doc["privacy_ok"], doc["timings_s"]["total"],
    )
    return paths
