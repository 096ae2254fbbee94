"""Stage 1 end to end: preprocessed AnnData in, seeds AnnData + model + log out."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .. import __version__
from .. import constants as C
from .._meta import rare_types_of
from .._utils import (
    atomic_path,
    check_writable_dir,
    resolve_device,
    set_seed,
    set_threads,
    versions,
    write_h5ad_atomic,
    write_text_atomic,
)
from ..errors import GarageError
from ._config import OBS_SEED_REGION, GATConfig
from ._features import NodeFeatures
from ._graph import CSRGraph, layerwise_inference
from ._module import GATClassifier
from ._score import AttentionCentrality, CellScores, combine_scores
from ._seeds import (
    SeedPlan,
    coverage_regions,
    random_keys,
    region_core,
    seed_quotas,
    select_per_region,
    select_seeds,
)
from ._train import LOG_COLUMNS, TrainData, TrainResult, check_memory, train_gat

logger = logging.getLogger(__name__)

MODEL_FORMAT = "garage-gat-1"
SUFFIX_CHECKPOINT = C.SUFFIX_GAT_CKPT
SCORE_FORMULAS = {
    "relative": (
        "score = r^lam * p^(1-lam); r = within-type rank(c)/n_type; "
        "c_j = mean over layers, heads and edges j->i (i != j) of alpha[j->i] * n_i, "
        "n_i = cells i attends over (deg_i + self-loop), i.e. attention relative to a "
        "uniform share; p = softmax probability of the cell's own label"
    ),
    "raw": (
        "score = r^lam * p^(1-lam); r = within-type rank(c)/n_type; "
        "c_j = mean over layers and heads of sum of alpha on edges j->i, i != j; "
        "p = softmax probability of the cell's own label"
    ),
}
#: the formula of the default centrality
SCORE_FORMULA = SCORE_FORMULAS[GATConfig().centrality]


@dataclass
class GATResult:
    """In-memory result of :func:`gat_adata`."""

    adata: Any  # the seeds AnnData
    model: GATClassifier
    payload: dict[str, Any]  # what PREFIX.gat.pt holds
    train: TrainResult
    scores: CellScores
    plan: SeedPlan
    #: both attention centralities per cell ("raw", "relative"); the score uses config.centrality
    centralities: dict[str, np.ndarray]
    #: coverage region rank of every cell (the OBS_SEED_REGION column)
    regions: np.ndarray


def check_input(adata, config: GATConfig) -> None:
    """Fail clearly when *adata* is not a ``garage preprocess`` output."""
    fix = "run `garage preprocess` on the counts first and pass its PREFIX.preprocessed.h5ad"
    for where, key, store in (
        ("obs", C.OBS_LABEL, adata.obs.columns),
        ("obs", C.OBS_SPLIT, adata.obs.columns),
        ("obsp", C.OBSP_CONNECTIVITIES, adata.obsp.keys()),
    ):
        if key not in store:
            raise GarageError(f"input has no {where}[{key!r}]; it is not a preprocessed file", fix)
    needs_pca = config.features == "pca" or (
        config.seed_strategy == "coverage" and config.coverage_space == "pca")
    if needs_pca and C.OBSM_PCA not in adata.obsm:
        raise GarageError(f"input has no obsm[{C.OBSM_PCA!r}]; it is not a preprocessed file", fix)
    if adata.n_obs < 2:
        raise GarageError(f"input has {adata.n_obs} cell(s)", "provide at least 10 cells")
    split = adata.obs[C.OBS_SPLIT].astype(str)
    bad = set(split.unique()) - {C.SPLIT_TRAIN, C.SPLIT_HOLDOUT}
    if bad:
        raise GarageError(f"obs[{C.OBS_SPLIT!r}] has values {sorted(bad)}",
                          f"use only {C.SPLIT_TRAIN!r}/{C.SPLIT_HOLDOUT!r} (rerun preprocess)")
    if not (split == C.SPLIT_TRAIN).any():
        raise GarageError("no train cells in the input", "rerun preprocess with a smaller --holdout-fraction")
    if adata.obsp[C.OBSP_CONNECTIVITIES].shape != (adata.n_obs, adata.n_obs):
        raise GarageError("obsp['connectivities'] does not match the cells", fix)
    if adata.obs[C.OBS_LABEL].isna().any():
        raise GarageError(f"obs[{C.OBS_LABEL!r}] has missing labels", fix)


def _features(adata, config: GATConfig) -> NodeFeatures:
    """Normalised node features; HVGs stay sparse (no dense cells x genes copy)."""
    if config.features == "pca":
        x = np.asarray(adata.obsm[C.OBSM_PCA], dtype=np.float32)
        finite = np.isfinite(x).all()
    else:
        x = adata.X if sp.issparse(adata.X) else sp.csr_matrix(adata.X)
        finite = np.isfinite(x.data).all()
    if not finite:
        raise GarageError(f"{config.features} features contain NaN/inf", "rerun `garage preprocess`")
    return NodeFeatures.fit(x)


def _rare_types(adata, config: GATConfig) -> tuple[list[str], str]:
    """The rare types preprocess decided (``uns['garage']['rare_types']``) and where from.

    ``config.rare_threshold`` is only a fallback for inputs without that list.
    """
    uns = adata.uns.get(C.UNS_KEY, {})
    if C.UNS_RARE_TYPES in uns:
        rare = rare_types_of(adata)
        used = uns.get("rare_threshold")
        given = config.rare_threshold
        if given is not None and (used is None or not np.isclose(float(used), float(given))):
            logger.warning(
                "--rare-threshold %g is ignored: the input's rare types %s were decided by "
                "`garage preprocess`%s; pass --rare-threshold to `garage preprocess` to change "
                "them",
                given, rare, "" if used is None else f" with threshold {float(used):g}")
        return rare, "preprocess"
    thr = C.RARE_THRESHOLD if config.rare_threshold is None else float(config.rare_threshold)
    return rare_types_of(adata, thr), f"fallback threshold {thr:g} (no uns['garage']['rare_types'])"


def _choose_seeds(adata, config: GATConfig, labels: pd.Series, is_train: np.ndarray,
                  score: np.ndarray, plan: SeedPlan, emb: np.ndarray,
                  perm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Seed mask and region ranks for ``config.seed_strategy`` (same quotas for all)."""
    names = adata.obs_names
    regions = np.full(adata.n_obs, -1, dtype=np.int64)
    if config.seed_strategy == "score":
        return select_seeds(labels, is_train, score, names, plan), regions
    if config.seed_strategy == "random":
        return select_seeds(labels, is_train, random_keys(names, config.seed), names, plan), regions
    # coverage: partition each type's train cells (in canonical name order) into quota regions
    rows = perm[is_train[perm]]
    types = [str(t) for t in plan.table.index]
    codes = pd.Categorical(labels.to_numpy()[rows], categories=types).codes.astype(np.int64)
    space = adata.obsm[C.OBSM_PCA] if config.coverage_space == "pca" else emb
    coords = np.asarray(space)[rows].astype(np.float64)  # train cells only
    region = coverage_regions(coords, codes, plan.table["quota"].to_numpy(np.int64))
    chosen, rank = select_per_region(region, codes, score[rows], np.asarray(names)[rows],
                                     core=region_core(coords, region))
    mask = np.zeros(adata.n_obs, dtype=bool)
    mask[rows[chosen]] = True
    regions[rows] = rank
    return mask, regions


def _fingerprint(adata, n_edges: int, categories: list[str]) -> dict[str, Any]:
    h = hashlib.sha1("\n".join(map(str, adata.obs_names)).encode()).hexdigest()
    return {"n_cells": int(adata.n_obs), "n_edges": int(n_edges), "classes": list(categories),
            "obs_names_sha1": h}


def gat_adata(
    adata,
    config: GATConfig,
    *,
    device: str | torch.device = "cpu",
    checkpoint: Path | None = None,
    resume: bool = False,
    copy: bool = True,
) -> GATResult:
    """Train the GAT on a preprocessed AnnData, score cells and select seeds (in memory).

    The result's ``adata`` is a copy of *adata* with the seed columns added
    (``copy=False`` adds them to *adata* itself and saves memory).

    Training runs in a canonical node order (cells sorted by obs name), so the
    fitted weights do not depend on the row order of the file; inference and
    scoring run on the input order.
    """
    config.validate()
    check_input(adata, config)
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    set_seed(int(config.seed))

    labels = adata.obs[C.OBS_LABEL].astype(str)
    cat = pd.Categorical(labels)
    categories = [str(c) for c in cat.categories]
    y = np.asarray(cat.codes, dtype=np.int64)
    is_train = (adata.obs[C.OBS_SPLIT].astype(str) == C.SPLIT_TRAIN).to_numpy()

    rare, rare_source = _rare_types(adata, config)
    feats = _features(adata, config)
    graph = CSRGraph.from_adjacency(adata.obsp[C.OBSP_CONNECTIVITIES])
    n, n_edges = adata.n_obs, graph.num_edges
    minibatch = n > config.minibatch_threshold
    epochs = config.resolved_epochs(minibatch, int(is_train.sum()))
    logger.info(
        "GAT on %d cells, %d edges, %d %s features, %d types: %s, %d epochs, device %s",
        n, n_edges, feats.shape[1], config.features, len(categories),
        "neighbour-sampled minibatches" if minibatch else "full batch", epochs, dev,
    )
    check_memory(n, n_edges, feats.shape[1], config, minibatch=minibatch, device=dev,
                 bytes_per_row=feats.bytes_per_row)

    # canonical order for training: sorted obs names (row order of the file cannot matter)
    names = np.asarray(adata.obs_names, dtype=str)
    if adata.obs_names.is_unique:
        perm = np.argsort(names, kind="stable")
    else:
        logger.warning("obs names are not unique: training follows the row order of the file")
        perm = np.arange(n)
    perm_t = torch.from_numpy(perm)
    data = TrainData(
        x=feats.permuted(perm),
        y=torch.from_numpy(y)[perm_t].contiguous(),
        train_idx=torch.from_numpy(np.flatnonzero(is_train[perm])),
        holdout_idx=torch.from_numpy(np.flatnonzero(~is_train[perm])),
        graph=graph.permuted(perm),
        n_classes=len(categories),
    )
    fingerprint = _fingerprint(adata, n_edges, categories)
    train = train_gat(data, config, device=dev, minibatch=minibatch, checkpoint=checkpoint,
                      resume=resume, fingerprint=fingerprint)
    model = train.model
    del data  # the training copy (canonical order); inference reads feats in input order

    # scoring: exact eval-mode inference on the input order, reading GATConv's alpha
    chunk = n if not minibatch else config.inference_batch_size
    centrality = AttentionCentrality(n, model.n_layers)
    logits, emb = layerwise_inference(model, feats, graph, chunk_size=chunk,
                                      device=dev, on_attention=centrality)
    probs = torch.softmax(logits.double(), dim=1).numpy()
    centralities = {"raw": centrality.raw(), "relative": centrality.relative()}
    scores = combine_scores(centralities[config.centrality], probs, y, config.score_weight)

    plan = seed_quotas(labels, is_train, seed_fraction=config.seed_fraction,
                       rare_types=rare, rare_min_seeds=config.rare_min_seeds)
    seed_mask, regions = _choose_seeds(adata, config, labels, is_train, scores.score, plan,
                                       emb.numpy(), perm)
    chosen = pd.Series(labels[seed_mask]).value_counts()
    plan.table["n_seeds"] = chosen.reindex(plan.table.index, fill_value=0).astype(int)
    logger.info("rare types (%s): %s", rare_source, rare or "none")
    logger.info("seed quotas (strategy %s, centrality %s):\n%s", config.seed_strategy,
                config.centrality, plan.table.to_string())

    final = train.log[-1] if train.log else {}
    pred = logits.argmax(1).numpy()
    out = adata.copy() if copy else adata
    out.obs[C.OBS_SCORE] = scores.score.astype(np.float64)
    out.obs[C.OBS_SEED] = seed_mask
    out.obs[OBS_SEED_REGION] = regions.astype(np.int32)
    out.obsm[C.OBSM_GAT] = emb.numpy().astype(np.float32)
    tab = plan.table
    metrics = {
        "holdout_balanced_accuracy": float(final.get("holdout_balanced_accuracy", np.nan)),
        "train_balanced_accuracy": float(final.get("train_balanced_accuracy", np.nan)),
        "final_loss": float(final.get("loss", np.nan)),
        "holdout_accuracy": float(np.mean(pred[~is_train] == y[~is_train]))
        if (~is_train).any() else float("nan"),
    }
    uns = dict(out.uns.get(C.UNS_KEY, {}))
    if C.UNS_RARE_TYPES not in uns:  # decided here (fallback): later stages read the same list
        uns[C.UNS_RARE_TYPES] = list(rare)
    uns["gat"] = {
        "params": config.to_uns(),
        **metrics,
        "epochs": int(train.epochs),
        "mode": "minibatch" if minibatch else "full-batch",
        "device": dev.type,
        "n_seeds": int(seed_mask.sum()),
        "seed_strategy": config.seed_strategy,
        "centrality": config.centrality,
        "rare_source": rare_source,
        "seed_types": [str(t) for t in tab.index],
        "seed_counts": tab["n_seeds"].astype(int).to_numpy(),
        "seed_quota": tab["quota"].astype(int).to_numpy(),
        "n_train": tab["n_train"].astype(int).to_numpy(),
        "is_rare": tab["is_rare"].astype(bool).to_numpy(),
        "rare_types": np.asarray(plan.rare_types, dtype=object),
        "score_formula": SCORE_FORMULAS[config.centrality],
        "seed_region_column": OBS_SEED_REGION,
        "versions": versions(),
    }
    out.uns[C.UNS_KEY] = uns
    logger.info("selected %d seeds (%s); holdout balanced accuracy %.3f", int(seed_mask.sum()),
                ", ".join(f"{t}: {c}" for t, c in tab["n_seeds"].items()),
                metrics["holdout_balanced_accuracy"])

    payload = {
        "format": MODEL_FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "hparams": dict(model.hparams),
        "config": config.to_dict(),
        "label_categories": categories,
        "features": config.features,
        "feature_center": torch.from_numpy(feats.center),
        "feature_scale": feats.scale,
        "features_centred": not feats.is_sparse,
        "var_names": [str(v) for v in adata.var_names] if config.features == "hvg" else [],
        "epochs": int(train.epochs),
        "mode": uns["gat"]["mode"],
        "metrics": metrics,
        "garage_version": __version__,
        "versions": versions(),
    }
    return GATResult(out, model, payload, train, scores, plan, centralities, regions)


def load_gat(path: Path, device: str = "cpu") -> tuple[GATClassifier, dict[str, Any]]:
    """Rebuild the trained classifier from ``PREFIX.gat.pt``; returns ``(model, payload)``."""
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise GarageError(f"model {path} does not exist", "pass a PREFIX.gat.pt from `garage gat`") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise GarageError(f"{path} is not a GARAGE GAT model", "pass a PREFIX.gat.pt from `garage gat`")
    hp = dict(payload["hparams"])
    model = GATClassifier(hp.pop("in_dim"), hp.pop("n_classes"), **hp)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model.to(resolve_device(device)), payload


def _log_tsv(rows: list[dict[str, float]]) -> str:
    lines = ["\t".join(LOG_COLUMNS)]
    for r in rows:
        lines.append("\t".join(
            str(int(r[c])) if c == "epoch" else f"{float(r[c]):.6g}" for c in LOG_COLUMNS
        ))
    return "\n".join(lines) + "\n"


def run_gat(
    input: Path,  # noqa: A002 - the documented contract name
    outdir: Path,
    prefix: str,
    config: GATConfig,
    *,
    device: str = "cpu",
    threads: int | None = None,
    resume: bool = False,
) -> dict[str, Path]:
    """Read ``PREFIX.preprocessed.h5ad``; write seeds, model and log (atomically).

    Returns ``{"h5ad": PREFIX.seeds.h5ad, "model": PREFIX.gat.pt, "log": PREFIX.gat_log.tsv}``.
    A checkpoint ``PREFIX.gat.ckpt.pt`` is written every ``checkpoint_every``
    epochs while training; ``resume=True`` continues from it; it is deleted on
    success.
    """
    import anndata as ad

    config.validate()
    dev = resolve_device(device)
    set_threads(threads)
    input = Path(input)
    if not input.is_file():
        raise GarageError(f"input {input} does not exist",
                          "pass the PREFIX.preprocessed.h5ad written by `garage preprocess`")
    outdir = check_writable_dir(Path(outdir))
    out = {
        "h5ad": outdir / f"{prefix}{C.SUFFIX_SEEDS}",
        "model": outdir / f"{prefix}{C.SUFFIX_GAT_MODEL}",
        "log": outdir / f"{prefix}{C.SUFFIX_GAT_LOG}",
    }
    ckpt = outdir / f"{prefix}{SUFFIX_CHECKPOINT}"
    if any(input.resolve() == p.resolve() for p in out.values()):
        raise GarageError("an output would overwrite the input", "choose another --outdir or --prefix")
    try:
        adata = ad.read_h5ad(input)
    except Exception as exc:
        raise GarageError(
            f"cannot read {input.name} as .h5ad ({type(exc).__name__})",
            "pass the PREFIX.preprocessed.h5ad written by `garage preprocess`",
        ) from None

    res = gat_adata(adata, config, device=dev, checkpoint=ckpt, resume=resume, copy=False)
    res.adata.uns[C.UNS_KEY]["gat"]["sample"] = prefix
    write_text_atomic(_log_tsv(res.train.log), out["log"])
    with atomic_path(out["model"]) as tmp:
        torch.save(res.payload, tmp)
    write_h5ad_atomic(res.adata, out["h5ad"])
    ckpt.unlink(missing_ok=True)
    logger.info("wrote %s, %s, %s", out["h5ad"], out["model"], out["log"])
    return out
