"""The evaluation protocol: every metric, its control, repeated balanced subsamples."""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from .. import constants as C
from ._config import EvaluateConfig
from ._metrics import (
    c2st_auc,
    gene_stats,
    leiden_ari_nmi,
    libsize_ks,
    median_sq_distance,
    mmd_rbf,
    pearson,
    wasserstein,
)
from ._per_type import per_type_mmd, per_type_table, rare_types, real_types
from ._privacy import exact_copies, mia_auc, nn_distances, nndr, safe_ratio
from ._space import Space
from ._utility import TypeClassifier, macro_f1

logger = logging.getLogger(__name__)

# the contract (docs/developer.md) lives in constants
BETTER: dict[str, str] = C.METRIC_BETTER
METRIC_NAMES: tuple[str, ...] = C.METRIC_NAMES


@dataclass
class Result:
    """In-memory result: the metrics JSON body, the per-type table, and plot inputs."""

    metrics: dict[str, dict]
    per_type: pd.DataFrame
    rare_types: list[str]
    missing_types: list[str]
    n_cells: dict[str, int]
    subsample: dict[str, int]
    holdout_recall: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def _rng(seed: int, name: str) -> np.random.Generator:
    """An independent, reproducible stream per metric (adding a metric moves no other)."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def _mean_std(vals: list[float]) -> tuple[float | None, float | None]:
    arr = np.asarray([v for v in vals if v is not None and np.isfinite(v)], dtype=float)
    if arr.size == 0:
        return None, None
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def _entry(name: str, vals: list[float], ctrl: list[float]) -> dict:
    v, vs = _mean_std(vals)
    c, cs = _mean_std(ctrl)
    return {"value": v, "std": vs, "control": c, "control_std": cs, "better": BETTER[name]}


def _fmt(x) -> str:
    return "NA" if x is None else f"{x:.4g}"


class _Log:
    """Logs each metric as it is finished, with its control and time taken."""

    def __init__(self, metrics: dict, timings: dict) -> None:
        self.metrics, self.timings = metrics, timings
        self.t0 = time.perf_counter()

    def start(self, what: str) -> None:
        logger.info("evaluate: %s ...", what)
        self.t0 = time.perf_counter()

    def done(self, *names: str, group: str | None = None) -> None:
        dt = time.perf_counter() - self.t0
        self.timings[group or names[0]] = round(dt, 3)
        for n in names:
            e = self.metrics[n]
            logger.info(
                "  %-17s %s ± %s (control %s ± %s; better: %s) [%.1fs]",
                n, _fmt(e["value"]), _fmt(e["std"]), _fmt(e["control"]), _fmt(e["control_std"]),
                e["better"], dt,
            )


def _perm(rng: np.random.Generator, n: int, m: int) -> np.ndarray:
    return rng.permutation(n)[:m]


def evaluate_space(space: Space, config: EvaluateConfig) -> Result:
    """Compute every metric and its control on a prepared :class:`Space`."""
    cfg = config
    P, L = space.pca, space.labels
    nT, nH, nS = space.n("train"), space.n("holdout"), space.n("synthetic")
    ref = space.train_ref  # train cells outside the PCA fit: the control's side
    nR = len(ref)
    metrics: dict[str, dict] = {}
    timings: dict[str, float] = {}
    log = _Log(metrics, timings)

    types = real_types(L)
    rare = rare_types(L, cfg.rare_threshold)
    syn_types = set(L["synthetic"])
    missing = [t for t in types if t not in syn_types]
    if missing:
        logger.warning("types present in real cells but absent from synthetic: %s", missing)
    hold_types = sorted(set(L["holdout"]))

    # balanced subsamples: n cells from holdout, synthetic and train in every repeat
    n = int(min(nH, nS, nR, cfg.max_cells))
    nw = int(min(n, cfg.wasserstein_max_cells))
    rng = _rng(cfg.seed, "draws")
    draws = [(_perm(rng, nH, n), _perm(rng, nS, n), _perm(rng, nR, n)) for _ in range(cfg.n_repeats)]
    H, S, T_all = P["holdout"], P["synthetic"], P["train"]
    T, LT = T_all[ref], L["train"][ref]  # "train" below means the reference half
    R = range(cfg.n_repeats)

    # --- distribution-level fidelity -------------------------------------
    log.start(f"c2st_auc ({cfg.c2st_classifier}, {cfg.cv_folds}-fold, {n} vs {n} cells)")
    kw = dict(classifier=cfg.c2st_classifier, k=cfg.c2st_neighbors, folds=cfg.cv_folds)
    metrics["c2st_auc"] = _entry(
        "c2st_auc",
        [c2st_auc(H[h], S[s], seed=cfg.seed + r, **kw) for r, (h, s, _) in zip(R, draws)],
        [c2st_auc(H[h], T[t], seed=cfg.seed + r, **kw) for r, (h, _, t) in zip(R, draws)],
    )
    log.done("c2st_auc")

    log.start("mmd_rbf")
    med = median_sq_distance(np.r_[T, H], _rng(cfg.seed, "bandwidth"))
    scales = med * np.asarray(cfg.mmd_factors, dtype=float)
    metrics["mmd_rbf"] = _entry(
        "mmd_rbf",
        [mmd_rbf(H[h], S[s], scales) for h, s, _ in draws],
        [mmd_rbf(H[h], T[t], scales) for h, _, t in draws],
    )
    log.done("mmd_rbf")

    d = int(min(cfg.wasserstein_n_pcs, space.n_pcs))
    log.start(f"wasserstein_pca (exact EMD on {d} leading PCs, {nw} vs {nw} cells)")
    metrics["wasserstein_pca"] = _entry(
        "wasserstein_pca",
        [wasserstein(H[h[:nw], :d], S[s[:nw], :d]) for h, s, _ in draws],
        [wasserstein(H[h[:nw], :d], T[t[:nw], :d]) for h, _, t in draws],
    )
    log.done("wasserstein_pca")

    log.start("gene statistics (mean, variance, zero fraction) and library size")
    LN, CN = dict(space.lognorm), dict(space.counts)
    LN["train"], CN["train"] = LN["train"][ref], CN["train"][ref]
    corr = {k: ([], []) for k in ("mean", "var", "zero")}
    ks_v, ks_c = [], []
    for h, s, t in draws:
        gh = gene_stats(LN["holdout"][h], CN["holdout"][h])
        gs = gene_stats(LN["synthetic"][s], CN["synthetic"][s])
        gt = gene_stats(LN["train"][t], CN["train"][t])
        for k in corr:
            corr[k][0].append(pearson(gh[k], gs[k]))
            corr[k][1].append(pearson(gh[k], gt[k]))
        ks_v.append(libsize_ks(CN["holdout"][h], CN["synthetic"][s]))
        ks_c.append(libsize_ks(CN["holdout"][h], CN["train"][t]))
    for k, name in (("mean", "mean_corr"), ("var", "var_corr"), ("zero", "zero_frac_corr")):
        metrics[name] = _entry(name, *corr[k])
    metrics["libsize_ks"] = _entry("libsize_ks", ks_v, ks_c)
    log.done("mean_corr", "var_corr", "zero_frac_corr", "libsize_ks", group="gene_stats")

    # --- cluster structure -------------------------------------------------
    nl = int(min(nH, nS, cfg.leiden_max_cells))
    log.start(f"Leiden (resolution {cfg.leiden_resolution}, {nl} cells per side)")
    rng = _rng(cfg.seed, "leiden")
    av, nv, ac, nc = [], [], [], []
    lkw = dict(resolution=cfg.leiden_resolution, k=cfg.leiden_neighbors)
    for r in R:
        s = _perm(rng, nS, nl)
        h = _perm(rng, nH, nl)
        a, b = leiden_ari_nmi(S[s], L["synthetic"][s], seed=cfg.seed + r, **lkw)
        av.append(a), nv.append(b)
        a, b = leiden_ari_nmi(H[h], L["holdout"][h], seed=cfg.seed + r, **lkw)
        ac.append(a), nc.append(b)
        if nl == nH == nS:
            break  # same cells every repeat
    metrics["ari"] = _entry("ari", av, ac)
    metrics["nmi"] = _entry("nmi", nv, nc)
    log.done("ari", "nmi", group="leiden")

    # --- per type ------------------------------------------------------------
    log.start("per-type agreement (classifier trained on real train cells) and per-type MMD")
    clf = TypeClassifier(cfg.seed).fit(T, LT)
    pred_s = clf.predict(S)
    pred_h = clf.predict(H)
    recall = {
        t: float(np.mean(pred_h[L["holdout"] == t] == t)) for t in hold_types
    }
    rng = _rng(cfg.seed, "per_type_mmd")
    mmd_t = {
        t: per_type_mmd(
            H[L["holdout"] == t], S[L["synthetic"] == t], scales,
            max_cells=cfg.max_cells, n_repeats=cfg.n_repeats, rng=rng,
        )
        for t in types
    }
    table = per_type_table(L, pred_s, mmd_t, rare)
    agree = dict(zip(table["cell_type"], table["agreement"]))
    # a rare type that is missing from the synthetic cells counts as 0 agreement
    rare_v = [0.0 if t in missing else agree[t] for t in rare]
    rare_c = [recall[t] for t in rare if t in recall]
    metrics["rare_agreement"] = {
        "value": float(np.mean(rare_v)) if rare_v else None,
        "std": 0.0 if rare_v else None,
        "control": float(np.mean(rare_c)) if rare_c else None,
        "control_std": 0.0 if rare_c else None,
        "better": BETTER["rare_agreement"],
    }
    metrics["type_agreement"] = {
        "value": float(np.mean(pred_s == L["synthetic"])),
        "std": 0.0,
        "control": float(np.mean(pred_h == L["holdout"])),
        "control_std": 0.0,
        "better": BETTER["type_agreement"],
    }
    log.done("rare_agreement", "type_agreement", group="per_type")

    # --- utility: train on synthetic, test on real holdout ----------------------
    m = int(min(nS, nR))
    log.start(f"utility (TSTR on {m} synthetic vs {nR} real train cells, test on {nH} holdout)")
    rare_h = [t for t in rare if t in hold_types]
    ctrl_pred = pred_h  # train on real train, test on holdout (same classifier as above)
    c_macro = macro_f1(L["holdout"], ctrl_pred, hold_types)
    c_rare = macro_f1(L["holdout"], ctrl_pred, rare_h) if rare_h else float("nan")
    rng = _rng(cfg.seed, "tstr")
    tm, tr, am = [], [], []
    for r in R:
        s = _perm(rng, nS, m)
        p = TypeClassifier(cfg.seed).fit(S[s], L["synthetic"][s]).predict(H)
        tm.append(macro_f1(L["holdout"], p, hold_types))
        tr.append(macro_f1(L["holdout"], p, rare_h) if rare_h else float("nan"))
        pa = TypeClassifier(cfg.seed).fit(
            np.r_[T, S[s]], np.r_[LT, L["synthetic"][s]]
        ).predict(H)
        am.append(macro_f1(L["holdout"], pa, hold_types))
        if m == nS:
            break  # every synthetic cell used: repeats would be identical
    metrics["tstr_macro_f1"] = _entry("tstr_macro_f1", tm, [c_macro])
    metrics["tstr_rare_f1"] = _entry("tstr_rare_f1", tr, [c_rare])
    metrics["augment_macro_f1"] = _entry("augment_macro_f1", am, [c_macro])
    log.done("tstr_macro_f1", "tstr_rare_f1", "augment_macro_f1", group="utility")

    # --- privacy -------------------------------------------------------------
    rng = _rng(cfg.seed, "privacy")
    npv = int(min(nS, cfg.privacy_max_cells))
    log.start(f"privacy (distances of {npv} synthetic and {nH} holdout cells to {nT} train cells)")
    sp_idx = _perm(rng, nS, npv)
    Sp = S[sp_idx]
    dS = nn_distances(T_all, Sp, 2)  # synthetic -> any train cell
    dH = nn_distances(T_all, H, 2)  # holdout -> any train cell
    nnS, nnH = nndr(dS), nndr(dH)
    dT_S = nn_distances(Sp, T, 1)[:, 0]  # reference train -> nearest synthetic (MIA members)
    dH_S = nn_distances(Sp, H, 1)[:, 0]  # holdout -> nearest synthetic (MIA non-members)
    med_dH, med_nnH = float(np.median(dH[:, 0])), float(np.median(nnH))
    mv = int(min(npv, nH))
    mm = int(min(nR, nH))
    half = nH // 2
    dcr_v, dcr_c, nn_v, nn_c, mia_v, mia_c = [], [], [], [], [], []
    for _ in R:
        s = rng.permutation(npv)[:mv]
        dcr_v.append(safe_ratio(float(np.median(dS[s, 0])), med_dH))
        nn_v.append(safe_ratio(float(np.median(nnS[s])), med_nnH))
        mem = _perm(rng, nR, mm)
        non = _perm(rng, nH, mm)
        mia_v.append(mia_auc(dT_S[mem], dH_S[non]))
        # control: half A of the holdout plays the synthetic set, half B the holdout
        ph = rng.permutation(nH)
        a, b = ph[:half], ph[half: 2 * half]
        dcr_c.append(safe_ratio(float(np.median(dH[a, 0])), float(np.median(dH[b, 0]))))
        nn_c.append(safe_ratio(float(np.median(nnH[a])), float(np.median(nnH[b]))))
        mem_c = _perm(rng, nR, len(b))
        mia_c.append(
            mia_auc(nn_distances(H[a], T[mem_c], 1)[:, 0], nn_distances(H[a], H[b], 1)[:, 0])
        )
    metrics["dcr_ratio"] = _entry("dcr_ratio", dcr_v, dcr_c)
    metrics["nndr_ratio"] = _entry("nndr_ratio", nn_v, nn_c)
    metrics["mia_auc"] = _entry("mia_auc", mia_v, mia_c)
    n_copies = exact_copies(space.counts["synthetic"], space.counts["train"])
    n_copies_c = exact_copies(space.counts["holdout"], space.counts["train"])
    metrics["exact_copies"] = {
        "value": int(n_copies), "std": 0.0, "control": int(n_copies_c), "control_std": 0.0,
        "better": BETTER["exact_copies"],
    }
    if n_copies:
        logger.warning("%d synthetic cells are exact copies of training cells", n_copies)
    log.done("dcr_ratio", "nndr_ratio", "mia_auc", "exact_copies", group="privacy")

    metrics = {k: metrics[k] for k in METRIC_NAMES}
    return Result(
        metrics=metrics,
        per_type=table,
        rare_types=rare,
        missing_types=missing,
        n_cells={"real_train": nT, "real_holdout": nH, "synthetic": nS},
        subsample={
            "two_sample": n, "wasserstein": nw, "leiden": nl, "tstr": m, "privacy": npv,
            "pca_fit": len(space.train_fit), "train_reference": nR,
        },
        holdout_recall=recall,
        timings=timings,
    )


def params_of(config: EvaluateConfig) -> dict:
    d = asdict(config)
    d["mmd_factors"] = list(config.mmd_factors)
    return d
