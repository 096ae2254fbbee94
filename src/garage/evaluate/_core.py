"""The evaluation protocol: every metric, its control, and a 95% interval from draws of the real cells.

Draws (``n_repeats`` = B of them, each with its own random stream):

* two-sample metrics (C2ST, MMD, Wasserstein, gene statistics, library size,
  Leiden, per-type C2ST) take a random **half** of the real holdout cells (at
  most ``max_cells``) and as many synthetic and train-reference cells: the spread
  over draws is a delete-half jackknife estimate of the holdout sampling error
  (Shao & Wu 1989), never zero because the holdout is small;
* classifier metrics (agreement, TSTR) train and test on **stratified bootstrap**
  resamples of the real cells (Efron & Tibshirani 1993);
* privacy metrics take random halves of bounded query pools; per-type and seed
  metrics bootstrap the cells of each type / the matched seed pairs.

``value`` and ``control`` are the means over draws, ``std``/``control_std`` the
standard deviations, and ``ci_*`` the 95% intervals ``mean ± t(0.975, B-1) * std``.
"""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from .. import constants as C
from .._utils import StepProgress
from ._config import EvaluateConfig
from ._intervals import entry, summarise
from ._metrics import (
    c2st_auc,
    c2st_auc_loo,
    gene_stats,
    leiden_ari_nmi,
    libsize_ks,
    median_sq_distance,
    mmd_rbf,
    pearson,
    wasserstein,
)
from ._per_type import per_type_mmd, per_type_table, real_types
from ._privacy import (
    PRIVACY_THRESHOLDS,
    exact_copies,
    loo_distances,
    match_by_centrality,
    mia_auc,
    nn_distances,
    nn_search,
    nndr,
    paired_auc,
    privacy_verdict,
    safe_ratio,
)
from ._space import Space, stratified_cap
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
    holdout_recall: dict[str, float] = field(default_factory=dict)  # per-type agreement control
    timings: dict[str, float] = field(default_factory=dict)
    privacy_ok: bool = True
    privacy_reasons: list[str] = field(default_factory=list)
    privacy_notes: list[str] = field(default_factory=list)
    #: types with synthetic cells whose per-type/rare DCR or seed checks could not run
    privacy_unchecked_types: list[str] = field(default_factory=list)
    rare_n_real_holdout: dict[str, int] = field(default_factory=dict)
    conditions: dict | None = None
    per_condition: pd.DataFrame | None = None


def _rng(seed: int, name: str) -> np.random.Generator:
    """An independent, reproducible stream per metric (adding a metric moves no other)."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def _e(name: str, vals, ctrl, n_real: int | None = None, point=None, cpoint=None) -> dict:
    return entry(name, vals, ctrl, BETTER.get(name, "closer to control"), n_real, point, cpoint)


def _mean(x) -> float | None:
    x = [float(v) for v in x if v is not None and np.isfinite(v)]
    return float(np.mean(x)) if x else None


#: full-size draws that give a two-sample metric's value when the holdout is small
#: (every such draw holds the same holdout cells; only the other side is resampled)
N_VALUE_DRAWS = 3


def _fmt(x) -> str:
    return "NA" if x is None else f"{x:.4g}"


#: Each step's seconds in the 1,000,000-cell evaluation of bench/results/evaluate_scale.json
#: (stage_timings_s): the weights of evaluate's progress, so its ETA follows where the time goes.
#: Reading the files and building the shared space were not timed apart there: the space is
#: given half of the 71.5 s they took together. The C2ST's 2.3 s covered 20 classifier fits (10
#: half draws, value and control); its 20 value draws since (40 more fits) make that about 7 s.
STEP_WEIGHTS = {"space": 35.8, "c2st_auc": 7.0, "mmd_rbf": 5.3, "wasserstein_pca": 5.6, "gene_stats": 8.5,
                "leiden": 10.1, "agreement": 25.8, "per_type_diagnosis": 68.9, "utility": 58.3,
                "privacy": 79.5, "seed_privacy": 196.1, "per_type_mmd": 2.2, "plots": 38.4}
#: the steps a per-condition section repeats for each condition
CONDITION_STEPS = ("c2st_auc", "mmd_rbf", "wasserstein_pca", "gene_stats", "leiden", "agreement", "utility")


def step_progress(*, n_conditions: int, plots: bool, seeds: bool) -> StepProgress:
    """Evaluate's progress (bar or log lines with an ETA; a heartbeat inside long steps).
    *n_conditions*: levels of the real file's condition (0 without one); *seeds*: seed cells
    or provenance were given (the seed privacy step runs)."""
    w = {k: v for k, v in STEP_WEIGHTS.items()
         if (plots or k != "plots") and (seeds or k != "seed_privacy")}
    if n_conditions:
        w["conditions"] = n_conditions * sum(STEP_WEIGHTS[k] for k in CONDITION_STEPS)
    return StepProgress("evaluate", w, log=logger)


class _Log:
    """Logs each metric group as it starts and each metric as it is finished; with *steps*,
    each group is also a step of the stage's progress."""

    def __init__(self, metrics: dict, timings: dict, prefix: str = "",
                 steps: StepProgress | None = None) -> None:
        self.metrics, self.timings, self.prefix, self.steps = metrics, timings, prefix, steps
        self.t0 = time.perf_counter()

    def start(self, what: str, key: str) -> None:
        logger.info("evaluate: %s%s ...", self.prefix, what)
        if self.steps is not None:
            self.steps.begin(key, what, announce=False)
        self.t0 = time.perf_counter()

    def done(self, *names: str, group: str | None = None) -> None:
        dt = time.perf_counter() - self.t0
        if self.steps is not None:
            self.steps.end()
        self.timings[group or names[0]] = round(dt, 3)
        for n in names:
            e = self.metrics.get(n)
            if e is None:
                continue
            logger.info(
                "  %-17s %s [%s, %s] (control %s [%s, %s]; better: %s) [%.1fs]",
                n, _fmt(e["value"]), _fmt(e["ci_low"]), _fmt(e["ci_high"]), _fmt(e["control"]),
                _fmt(e["control_ci_low"]), _fmt(e["control_ci_high"]), e["better"], dt,
            )


def _perm(rng: np.random.Generator, n: int, m: int) -> np.ndarray:
    return rng.permutation(n)[:m]


def half(n: int) -> int:
    """Holdout cells in one draw: a random half (all of them below 4 cells)."""
    return n // 2 if n >= 4 else n


def _groups(labels: np.ndarray) -> list[np.ndarray]:
    return [np.flatnonzero(labels == t) for t in np.unique(labels)]


def strat_boot(rng: np.random.Generator, groups: list[np.ndarray]) -> np.ndarray:
    """A stratified bootstrap resample: each group resampled with replacement, same sizes."""
    if not groups:
        return np.zeros(0, dtype=int)
    return np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups if len(g)])


def _boot(rng: np.random.Generator, idx: np.ndarray) -> np.ndarray:
    return idx[rng.integers(0, len(idx), len(idx))] if len(idx) else idx


# ---------------------------------------------------------------------------------------
def _two_sample(space: Space, cfg: EvaluateConfig, log: _Log, metrics: dict, sub: dict) -> None:
    """C2ST, MMD, Wasserstein, gene statistics, library size and Leiden.

    The value compares ``n = min(holdout, synthetic, train reference, max_cells)`` cells
    per side; its standard error comes from draws that take a random half of the
    holdout (delete-half jackknife).  When half of the holdout is still at least
    ``max_cells`` the two kinds of draw coincide and are made once, except for the
    C2ST, whose value always averages ``c2st_draws`` full-size draws of its own.
    """
    P, L = space.pca, space.labels
    nH, nS = space.n("holdout"), space.n("synthetic")
    ref = space.train_ref
    nR = len(ref)
    n = int(min(nH, nS, nR, cfg.max_cells))
    nh = int(min(half(nH), nS, nR, cfg.max_cells))
    sub.update(two_sample=n, two_sample_half=nh, wasserstein=int(min(n, cfg.wasserstein_max_cells)))
    rng = _rng(cfg.seed, "draws")
    half_draws = [(_perm(rng, nH, nh), _perm(rng, nS, nh), _perm(rng, nR, nh))
                  for _ in range(cfg.n_repeats)]
    same = n == nh
    full_draws = half_draws if same else [
        (_perm(rng, nH, n), _perm(rng, nS, n), _perm(rng, nR, n))
        for _ in range(min(cfg.n_repeats, N_VALUE_DRAWS))]
    H, S, T = P["holdout"], P["synthetic"], P["train"][ref]

    def run(fn, name, n_real, cap=None):
        """fn(h, s, t, r) -> (value, control) for one draw; full draws give the value.

        With a *cap* on the cells fn uses, full and half draws coincide once both exceed it.
        """
        hv = [fn(h, s, t, r) for r, (h, s, t) in enumerate(half_draws)]
        same_here = same or (cap is not None and min(n, cap) == min(nh, cap))
        fv = hv if same_here else [fn(h, s, t, r) for r, (h, s, t) in enumerate(full_draws)]
        return _e(name, [a for a, _ in hv], [b for _, b in hv], n_real,
                  _mean([a for a, _ in fv]), _mean([b for _, b in fv]))

    log.start(f"c2st_auc ({cfg.c2st_classifier}, {cfg.cv_folds}-fold, {n} vs {n} cells, value over "
              f"{cfg.c2st_draws} draws; intervals from {cfg.n_repeats} half-holdout draws of {nh})", "c2st_auc")
    kw = dict(classifier=cfg.c2st_classifier, k=cfg.c2st_neighbors, folds=cfg.cv_folds)

    def c2st_pair(h, s, t, r):
        return (c2st_auc(H[h], S[s], seed=cfg.seed + r, **kw), c2st_auc(H[h], T[t], seed=cfg.seed + r, **kw))

    # the value: c2st_draws full-size draws of its own (the other metrics' draws are unchanged); a
    # kNN C2ST on a few hundred cells per side moved by ~0.014 (sd) between evaluations at 3 draws.
    # The synthetic side has a stream of its own, so the holdout and train draws, and with them the
    # control, are the same for every synthetic file evaluated with this seed, whatever its size
    hv = [c2st_pair(h, s, t, r) for r, (h, s, t) in enumerate(half_draws)]
    vrng, srng = _rng(cfg.seed, "c2st_value"), _rng(cfg.seed, "c2st_value_synthetic")
    fv = [c2st_pair(_perm(vrng, nH, n), _perm(srng, nS, n), _perm(vrng, nR, n), r)
          for r in range(cfg.c2st_draws)]
    metrics["c2st_auc"] = _e("c2st_auc", [a for a, _ in hv], [b for _, b in hv], n,
                             _mean([a for a, _ in fv]), _mean([b for _, b in fv]))
    log.done("c2st_auc")

    log.start("mmd_rbf", "mmd_rbf")
    med = median_sq_distance(np.r_[T, H], _rng(cfg.seed, "bandwidth"))
    scales = med * np.asarray(cfg.mmd_factors, dtype=float)
    space.mmd_scales = scales  # reused by the per-type MMD
    metrics["mmd_rbf"] = run(
        lambda h, s, t, r: (mmd_rbf(H[h], S[s], scales), mmd_rbf(H[h], T[t], scales)),
        "mmd_rbf", n)
    log.done("mmd_rbf")

    d = int(min(cfg.wasserstein_n_pcs, space.n_pcs))
    nw = int(cfg.wasserstein_max_cells)
    log.start(f"wasserstein_pca (exact EMD on {d} leading PCs, {min(n, nw)} vs {min(n, nw)} cells)", "wasserstein_pca")
    metrics["wasserstein_pca"] = run(
        lambda h, s, t, r: (wasserstein(H[h[:nw], :d], S[s[:nw], :d]),
                            wasserstein(H[h[:nw], :d], T[t[:nw], :d])),
        "wasserstein_pca", min(n, nw), cap=nw)
    log.done("wasserstein_pca")

    log.start("gene statistics (mean, variance, zero fraction) and library size", "gene_stats")
    LN, CN = space.lognorm, space.counts

    def genes(h, s, t):
        gh = gene_stats(LN["holdout"][h], CN["holdout"][h])
        gs = gene_stats(LN["synthetic"][s], CN["synthetic"][s])
        gt = gene_stats(LN["train"][ref[t]], CN["train"][ref[t]])
        out = {k: (pearson(gh[k], gs[k]), pearson(gh[k], gt[k])) for k in ("mean", "var", "zero")}
        out["ks"] = (libsize_ks(CN["holdout"][h], CN["synthetic"][s]),
                     libsize_ks(CN["holdout"][h], CN["train"][ref[t]]))
        return out

    hv = [genes(h, s, t) for h, s, t in half_draws]
    fv = hv if same else [genes(h, s, t) for h, s, t in full_draws]
    for k, name in (("mean", "mean_corr"), ("var", "var_corr"), ("zero", "zero_frac_corr"),
                    ("ks", "libsize_ks")):
        metrics[name] = _e(name, [g[k][0] for g in hv], [g[k][1] for g in hv], n,
                           _mean([g[k][0] for g in fv]), _mean([g[k][1] for g in fv]))
    log.done("mean_corr", "var_corr", "zero_frac_corr", "libsize_ks", group="gene_stats")

    nl = int(min(nH, nS, cfg.leiden_max_cells))
    nlh = int(min(half(nH), nS, cfg.leiden_max_cells))
    sub["leiden"] = nl
    log.start(f"Leiden (resolution {cfg.leiden_resolution}, {nl} cells per side)", "leiden")
    rng = _rng(cfg.seed, "leiden")
    lkw = dict(resolution=cfg.leiden_resolution, k=cfg.leiden_neighbors)

    def leiden(m, r):
        s, h = _perm(rng, nS, m), _perm(rng, nH, m)
        return (leiden_ari_nmi(S[s], L["synthetic"][s], seed=cfg.seed + r, **lkw),
                leiden_ari_nmi(H[h], L["holdout"][h], seed=cfg.seed + r, **lkw))

    hv = [leiden(nlh, r) for r in range(cfg.n_repeats)]
    fv = hv if nl == nlh else [leiden(nl, r) for r in range(min(cfg.n_repeats, N_VALUE_DRAWS))]
    for i, name in enumerate(("ari", "nmi")):
        metrics[name] = _e(name, [a[i] for a, _ in hv], [b[i] for _, b in hv], nl,
                           _mean([a[i] for a, _ in fv]), _mean([b[i] for _, b in fv]))
    log.done("ari", "nmi", group="leiden")


def _agreement(space: Space, cfg: EvaluateConfig, log: _Log, metrics: dict, sub: dict) -> dict:
    """Type and rare agreement with a judge trained on real holdout cells only.

    The judge never saw a training cell (so never a seed): the value is its agreement
    with the synthetic labels, the control its agreement with real train-reference
    cells, which it never saw either.  Each draw retrains it on a stratified
    bootstrap of the holdout.
    """
    P, L = space.pca, space.labels
    rare = space.rare
    types = real_types(L)
    ref = space.train_ref
    H, S, T = P["holdout"], P["synthetic"], P["train"][ref]
    LH, LS, LT = L["holdout"], L["synthetic"], L["train"][ref]
    rng = _rng(cfg.seed, "judge")
    pool = stratified_cap(LH, cfg.classifier_max_cells, rng, set(rare))
    groups = [pool[g] for g in _groups(LH[pool])]
    sub["judge"] = len(pool)
    log.start(f"agreement (judge: classifier trained on {len(pool)} real holdout cells, "
              f"{cfg.n_repeats} stratified bootstrap draws)", "agreement")
    present = set(LS)
    agree = {t: [] for t in types}
    ctrl = {t: [] for t in types}
    tv, tc, rv, rc = [], [], [], []
    s_groups, t_groups = _groups(LS), _groups(LT)
    for b in range(-1, cfg.n_repeats):  # b = -1: the judge on the whole pool (the value)
        idx = pool if b < 0 else strat_boot(rng, groups)
        clf = TypeClassifier(cfg.seed + max(b, 0)).fit(H[idx], LH[idx])
        ps, pr = clf.predict(S), clf.predict(T)
        # the draws also resample the judged cells within each type, so a type's interval carries
        # the sampling error of its few cells, not only the judge's
        js = np.arange(len(LS)) if b < 0 else strat_boot(rng, s_groups)
        jr = np.arange(len(LT)) if b < 0 else strat_boot(rng, t_groups)
        ps, lsb, pr, ltb = ps[js], LS[js], pr[jr], LT[jr]
        for t in types:
            ms, mr = lsb == t, ltb == t
            agree[t].append(float(np.mean(ps[ms] == t)) if ms.any() else np.nan)
            ctrl[t].append(float(np.mean(pr[mr] == t)) if mr.any() else np.nan)
        tv.append(float(np.mean(ps == lsb)))
        tc.append(float(np.mean(pr == ltb)))
        if rare:
            # a rare type that is missing from the synthetic cells counts as 0 agreement
            rv.append(float(np.mean([agree[t][-1] if t in present else 0.0 for t in rare])))
            rc.append(_mean([ctrl[t][-1] for t in rare]))
    n_rare = int(np.isin(LH, rare).sum())
    first = (lambda x: x[0] if x else None)  # noqa: E731
    metrics["rare_agreement"] = _e("rare_agreement", rv[1:], rc[1:], n_rare, first(rv), first(rc))
    metrics["type_agreement"] = _e("type_agreement", tv[1:], tc[1:], len(pool), tv[0], tc[0])
    log.done("rare_agreement", "type_agreement", group="agreement")
    return {"agree": agree, "ctrl": ctrl}


def _utility(space: Space, cfg: EvaluateConfig, log: _Log, metrics: dict, sub: dict) -> None:
    """TSTR and augmentation: train on synthetic (or real + synthetic), test on real holdout."""
    P, L = space.pca, space.labels
    ref = space.train_ref
    H, S, T = P["holdout"], P["synthetic"], P["train"][ref]
    LH, LS, LT = L["holdout"], L["synthetic"], L["train"][ref]
    nS, nR = space.n("synthetic"), len(ref)
    rare = space.rare
    hold_types = sorted(set(LH))
    rare_h = [t for t in rare if t in hold_types]
    m = int(min(nS, nR, cfg.classifier_max_cells))
    sub["tstr"] = m
    rng = _rng(cfg.seed, "tstr")
    hgroups = _groups(LH)
    tpool = stratified_cap(LT, cfg.classifier_max_cells, rng, set(rare))
    tgroups = [tpool[g] for g in _groups(LT[tpool])]
    log.start(f"utility (TSTR: {m} synthetic vs {len(tpool)} real train cells, tested on "
              f"bootstrap resamples of {len(LH)} holdout cells)", "utility")
    tm, tr, am, cm, cr = [], [], [], [], []
    for b in range(cfg.n_repeats):
        s = _perm(rng, nS, m)
        hb = strat_boot(rng, hgroups)
        tb = strat_boot(rng, tgroups)
        p = TypeClassifier(cfg.seed + b).fit(S[s], LS[s]).predict(H)
        pc = TypeClassifier(cfg.seed + b).fit(T[tb], LT[tb]).predict(H)
        pa = TypeClassifier(cfg.seed + b).fit(np.r_[T[tb], S[s]], np.r_[LT[tb], LS[s]]).predict(H)
        tm.append(macro_f1(LH[hb], p[hb], hold_types))
        am.append(macro_f1(LH[hb], pa[hb], hold_types))
        cm.append(macro_f1(LH[hb], pc[hb], hold_types))
        tr.append(macro_f1(LH[hb], p[hb], rare_h) if rare_h else np.nan)
        cr.append(macro_f1(LH[hb], pc[hb], rare_h) if rare_h else np.nan)
    n_rare = int(np.isin(LH, rare_h).sum())
    metrics["tstr_macro_f1"] = _e("tstr_macro_f1", tm, cm, len(LH))
    metrics["tstr_rare_f1"] = _e("tstr_rare_f1", tr, cr, n_rare)
    metrics["augment_macro_f1"] = _e("augment_macro_f1", am, cm, len(LH))
    log.done("tstr_macro_f1", "tstr_rare_f1", "augment_macro_f1", group="utility")


def _pooled_privacy(space: Space, cfg: EvaluateConfig, log: _Log, metrics: dict, sub: dict) -> None:
    """DCR, NNDR, MIA (half-holdout draws of bounded pools) and exact copies."""
    P = space.pca
    ref = space.train_ref
    H, S, T_all = P["holdout"], P["synthetic"], P["train"]
    T = T_all[ref]
    nH, nS, nR, nT = space.n("holdout"), space.n("synthetic"), len(ref), space.n("train")
    cap = cfg.privacy_max_cells
    rng = _rng(cfg.seed, "privacy")
    sp_, hp = _perm(rng, nS, min(nS, cap)), _perm(rng, nH, min(nH, cap))
    mp = _perm(rng, nR, min(nR, cap))
    sub.update(privacy=len(sp_), privacy_holdout=len(hp))
    log.start(f"privacy (nearest train cells of {len(sp_)} synthetic and {len(hp)} holdout cells "
              f"among {nT} train cells)", "privacy")
    Sp = S[sp_]
    dS = nn_distances(T_all, Sp, 2)  # synthetic -> any train cell
    dH = nn_distances(T_all, H[hp], 2)  # holdout -> any train cell
    nnS, nnH = nndr(dS), nndr(dH)
    dT_S = nn_distances(Sp, T[mp], 1)[:, 0]  # reference train -> nearest synthetic (members)
    dH_S = nn_distances(Sp, H[hp], 1)[:, 0]  # holdout -> nearest synthetic (non-members)
    hh = half(len(hp))
    # values: every pooled cell; std: draws on random halves of the holdout pool
    p_dcr = safe_ratio(float(np.median(dS[:, 0])), float(np.median(dH[:, 0])))
    p_nn = safe_ratio(float(np.median(nnS)), float(np.median(nnH)))
    p_mia = mia_auc(dT_S, dH_S)
    dcr_v, dcr_c, nn_v, nn_c, mia_v, mia_c = [], [], [], [], [], []
    for _ in range(cfg.n_repeats):
        ph = rng.permutation(len(hp))
        a, b = ph[:hh], ph[hh: 2 * hh] if len(hp) >= 4 else ph[:hh]
        s = _perm(rng, len(sp_), half(len(sp_)))
        den, den_nn = float(np.median(dH[a, 0])), float(np.median(nnH[a]))
        dcr_v.append(safe_ratio(float(np.median(dS[s, 0])), den))
        nn_v.append(safe_ratio(float(np.median(nnS[s])), den_nn))
        # control: half B of the holdout plays the synthetic set, half A the holdout
        dcr_c.append(safe_ratio(float(np.median(dH[b, 0])), den))
        nn_c.append(safe_ratio(float(np.median(nnH[b])), den_nn))
        mem = _perm(rng, len(mp), min(len(mp), hh))
        mia_v.append(mia_auc(dT_S[mem], dH_S[a]))
        mia_c.append(mia_auc(nn_distances(H[hp[b]], T[mp[mem]], 1)[:, 0],
                             nn_distances(H[hp[b]], H[hp[a]], 1)[:, 0]))
    metrics["dcr_ratio"] = _e("dcr_ratio", dcr_v, dcr_c, len(hp), p_dcr)
    metrics["nndr_ratio"] = _e("nndr_ratio", nn_v, nn_c, len(hp), p_nn)
    metrics["mia_auc"] = _e("mia_auc", mia_v, mia_c, len(hp), p_mia)
    n_copies = exact_copies(space.counts["synthetic"], space.counts["train"])
    n_copies_c = exact_copies(space.counts["holdout"], space.counts["train"])
    # a count over every synthetic cell, not an estimate: its interval is the count itself
    metrics["exact_copies"] = {
        "value": int(n_copies), "std": 0.0, "control": int(n_copies_c), "control_std": 0.0,
        "better": BETTER["exact_copies"], "ci_low": int(n_copies), "ci_high": int(n_copies),
        "control_ci_low": int(n_copies_c), "control_ci_high": int(n_copies_c), "n_real": nH,
    }
    if n_copies:
        logger.warning("%d synthetic cells are exact copies of training cells", n_copies)
    log.done("dcr_ratio", "nndr_ratio", "mia_auc", "exact_copies", group="privacy")


def _per_type(space: Space, cfg: EvaluateConfig, log: _Log, metrics: dict, sub: dict,
              unchecked: dict[str, list[str]] | None = None) -> dict:
    """Per-type C2ST, spread ratio and DCR (bounded per-type pools), plus rare summaries.

    *unchecked* collects, per type with synthetic cells, why its per-type DCR (and, for a
    rare type, its part of ``rare_dcr_ratio``) could not be computed.
    """
    P, L = space.pca, space.labels
    ref = space.train_ref
    H, S, T_all = P["holdout"], P["synthetic"], P["train"]
    LH, LS, LTa = L["holdout"], L["synthetic"], L["train"]
    types = real_types(L)
    rare = space.rare
    B = cfg.n_repeats
    cap = cfg.per_type_max_cells
    rng = _rng(cfg.seed, "per_type")
    log.start(f"per type (C2ST, spread, DCR; at most {cap} cells per type and set)", "per_type_diagnosis")

    def pool(labels, idx=None):
        idx = np.arange(len(labels)) if idx is None else idx
        out = {}
        for t in types:
            rows = idx[labels[idx] == t]
            out[t] = rng.permutation(rows)[: min(len(rows), cap)]
        return out

    ph, ps, pr = pool(LH), pool(LS), pool(LTa, ref)
    fit_set = np.zeros(len(LTa), dtype=bool)
    fit_set[space.train_fit] = True
    # distances to the closest train cell (any train cell); train reference leaves itself out
    cat = lambda d: np.concatenate([d[t] for t in types]) if types else np.zeros(0, dtype=int)  # noqa: E731
    all_h, all_s, all_r = cat(ph), cat(ps), cat(pr)
    dcr_h = dict(zip(all_h, nn_distances(T_all, H[all_h], 1)[:, 0])) if len(all_h) else {}
    dcr_s = dict(zip(all_s, nn_distances(T_all, S[all_s], 1)[:, 0])) if len(all_s) else {}
    dcr_r = dict(zip(all_r, loo_distances(T_all, all_r, 1)[:, 0])) if len(all_r) else {}
    out: dict[str, dict] = {}
    rare_draws = {"dcr_v": [[] for _ in range(B)], "dcr_c": [[] for _ in range(B)],
                  "dcr_h": [[] for _ in range(B)]}
    spread = {t: ([], []) for t in types}
    dcr = {t: ([], []) for t in types}
    points: dict[str, tuple] = {}
    for t in types:
        h, s, r = ph[t], ps[t], pr[t]
        row: dict = {}
        # per-type C2ST: value on n_t cells per side, std from half-holdout draws
        n_t = int(min(len(h), len(s), len(r)))
        nh_t = int(min(half(len(h)), len(s), len(r)))
        row["c2st_n"] = n_t
        if n_t >= cfg.per_type_min_cells:
            def one(m, b):
                hh, ss, rr = _perm(rng, len(h), m), _perm(rng, len(s), m), _perm(rng, len(r), m)
                return (c2st_auc_loo(H[h[hh]], S[s[ss]], k=cfg.c2st_neighbors),
                        c2st_auc_loo(H[h[hh]], T_all[r[rr]], k=cfg.c2st_neighbors))

            fv = [one(n_t, b) for b in range(min(B, N_VALUE_DRAWS))]
            hv = [one(nh_t, b) for b in range(B)] if nh_t >= 4 else []
            row["c2st"] = entry("c2st", [a for a, _ in hv], [c for _, c in hv], "closer to 0.5",
                                n_t, _mean([a for a, _ in fv]), _mean([c for _, c in fv]))
        # spread around the type's real centroid (from PCA-fit train cells: external to every side)
        cen_rows = np.flatnonzero((LTa == t) & fit_set)
        if len(cen_rows) == 0:
            cen_rows = np.flatnonzero(LTa == t)
        if len(h) and len(cen_rows):
            mu = T_all[cen_rows].mean(axis=0)
            dh = np.linalg.norm(H[h] - mu, axis=1)
            ds = np.linalg.norm(S[s] - mu, axis=1) if len(s) else np.zeros(0)
            dr = np.linalg.norm(T_all[r] - mu, axis=1) if len(r) else np.zeros(0)
            dh_t = np.array([dcr_h[i] for i in h])
            ds_t = np.array([dcr_s[i] for i in s]) if len(s) else np.zeros(0)
            dr_t = np.array([dcr_r[i] for i in r]) if len(r) else np.zeros(0)
            for b in range(B):
                hb = rng.integers(0, len(h), len(h))
                sb = rng.integers(0, len(s), len(s)) if len(s) else None
                rb = rng.integers(0, len(r), len(r)) if len(r) else None
                den, den_d = float(dh[hb].mean()), float(np.median(dh_t[hb]))
                spread[t][0].append(safe_ratio(float(ds[sb].mean()), den) if sb is not None else np.nan)
                spread[t][1].append(safe_ratio(float(dr[rb].mean()), den) if rb is not None else np.nan)
                dcr[t][0].append(
                    safe_ratio(float(np.median(ds_t[sb])), den_d) if sb is not None else np.nan)
                dcr[t][1].append(
                    safe_ratio(float(np.median(dr_t[rb])), den_d) if rb is not None else np.nan)
                if t in rare and sb is not None and rb is not None:
                    # composition matched to the holdout: as many synthetic/train cells as holdout
                    k = len(h)
                    rare_draws["dcr_h"][b].append(dh_t[hb])
                    rare_draws["dcr_v"][b].append(ds_t[rng.integers(0, len(s), k)])
                    rare_draws["dcr_c"][b].append(dr_t[rng.integers(0, len(r), k)])
            points[t] = (
                safe_ratio(float(ds.mean()), float(dh.mean())) if len(s) else None,
                safe_ratio(float(dr.mean()), float(dh.mean())) if len(r) else None,
                safe_ratio(float(np.median(ds_t)), float(np.median(dh_t))) if len(s) else None,
                safe_ratio(float(np.median(dr_t)), float(np.median(dh_t))) if len(r) else None,
            )
        pt = points.get(t, (None,) * 4)
        row["spread"] = entry("spread_ratio", *spread[t], "closer to 1", len(h), pt[0], pt[1])
        row["dcr"] = entry("dcr_ratio", *dcr[t], "closer to 1", len(h), pt[2], pt[3])
        out[t] = row

    # rare summaries (mean spread over rare types with synthetic cells; pooled DCR)
    rare_ok = [t for t in rare if len(ps.get(t, [])) and len(ph.get(t, []))]
    n_rare = int(sum(len(ph[t]) for t in rare_ok))
    sv = [_mean([spread[t][0][b] for t in rare_ok]) for b in range(B)] if rare_ok else []
    sc = [_mean([spread[t][1][b] for t in rare_ok]) for b in range(B)] if rare_ok else []
    metrics["rare_spread_ratio"] = _e(
        "rare_spread_ratio", sv, sc, n_rare,
        _mean([points[t][0] for t in rare_ok if t in points]) if rare_ok else None,
        _mean([points[t][1] for t in rare_ok if t in points]) if rare_ok else None)
    dv, dc = [], []
    for b in range(B):
        if rare_draws["dcr_h"][b]:
            den = float(np.median(np.concatenate(rare_draws["dcr_h"][b])))
            dv.append(safe_ratio(float(np.median(np.concatenate(rare_draws["dcr_v"][b]))), den))
            dc.append(safe_ratio(float(np.median(np.concatenate(rare_draws["dcr_c"][b]))), den))
    metrics["rare_dcr_ratio"] = _e("rare_dcr_ratio", dv, dc, n_rare)
    if unchecked is not None:
        for t in types:
            if not len(ps[t]):
                continue  # no synthetic cells of the type: nothing to check
            e = out[t]["dcr"]
            if not len(ph[t]):
                why = "no real holdout cells"
            elif not len(pr[t]):
                why = "no real train-reference cells"
            elif e["value"] is None or e["control"] is None:
                why = "undefined"
            else:
                continue
            what = "rare_dcr_ratio and per-type DCR" if t in rare and why != "undefined" \
                else "per-type DCR"
            unchecked.setdefault(t, []).append(f"{what}: {why}")
    log.done("rare_spread_ratio", "rare_dcr_ratio", group="per_type_diagnosis")
    return out


#: largest relative centrality difference between a seed and its matched holdout cell or
#: pseudo-seed in ``seed_mia_auc`` (5%: in the usual range of matching calipers)
SEED_MATCH_CALIPER = 0.05


def _seed_metrics(space: Space, cfg: EvaluateConfig, log: _Log, metrics: dict, sub: dict,
                  unchecked: dict[str, list[str]] | None = None) -> None:
    """``seed_mia_auc`` (matched-pair attack with a real null) and ``seed_nn_share``.

    *unchecked* collects the types with synthetic cells whose seeds no seed check covers:
    seeds of the type in no matched pair of ``seed_mia_auc``, or seeded synthetic cells of
    the type that all share one seed (the within-type shuffle of ``seed_nn_share`` is then
    the identity, so its control equals its value).
    """
    unchecked = {} if unchecked is None else unchecked
    empty = {"value": None, "std": None, "control": None, "control_std": None,
             "ci_low": None, "ci_high": None, "control_ci_low": None, "control_ci_high": None,
             "n_real": None}
    for name in ("seed_mia_auc", "seed_nn_share"):
        metrics[name] = dict(empty, better=BETTER[name])
    if space.seed is None or not space.seed.any():
        return
    P, L = space.pca, space.labels
    H, S, T_all = P["holdout"], P["synthetic"], P["train"]
    LH, LTa = L["holdout"], L["train"]
    cap = cfg.privacy_max_cells
    rng = _rng(cfg.seed, "seeds")
    seeds = np.flatnonzero(space.seed)
    syn_types = set(L["synthetic"])
    seed_types = sorted(set(LTa[seeds]) & syn_types)
    if len(seeds) > cap:
        seeds = np.sort(rng.permutation(seeds)[:cap])
    sub["seeds"] = len(seeds)
    cand = stratified_cap(LH, cap, rng, set(space.rare))
    k = cfg.seed_neighbors
    log.start(f"seed privacy ({len(seeds)} seeds vs matched holdout cells; nearest of "
              f"{space.n('synthetic')} synthetic cells)", "seed_privacy")
    # centrality: mean distance to the k nearest other real cells (train + holdout)
    real_all = np.r_[T_all, H]
    c_seed = loo_distances(real_all, seeds, k).mean(axis=1)
    c_cand = loo_distances(real_all, len(T_all) + cand, k).mean(axis=1)
    # pseudo-seeds: train cells that were NOT seeds, matched to each seed the same way.  They
    # were trained on like the seeds, so they carry any general membership leak and the same
    # hubness, but nothing seed-specific: the attack on them is the null.
    nonseed = np.flatnonzero(~space.seed)
    if len(nonseed) > cap:
        nonseed = np.sort(rng.permutation(nonseed)[:cap])
    c_non = loo_distances(real_all, nonseed, k).mean(axis=1)
    si, ci = match_by_centrality(c_seed, LTa[seeds], c_cand, LH[cand])
    sp_, pi = match_by_centrality(c_seed, LTa[seeds], c_non, LTa[nonseed])
    to_c, to_p = dict(zip(si.tolist(), ci.tolist())), dict(zip(sp_.tolist(), pi.tolist()))
    # caliper: keep only seeds matched closely in BOTH pools.  The most central seeds often have
    # no non-seed train cell as central (the GAT took them all), and a looser pseudo-seed is
    # farther from everything, which biases the null downwards.
    cal = SEED_MATCH_CALIPER * c_seed
    to_c = {s: j for s, j in to_c.items() if abs(c_cand[j] - c_seed[s]) <= cal[s]}
    to_p = {s: j for s, j in to_p.items() if abs(c_non[j] - c_seed[s]) <= cal[s]}
    si = np.asarray(sorted(set(to_c) & set(to_p)), dtype=int)  # seeds with both matches
    ci = np.asarray([to_c[i] for i in si], dtype=int)
    pi = np.asarray([to_p[i] for i in si], dtype=int)
    sub["seed_pairs"] = len(si)
    if len(si) >= 2:
        xs, xc, xp = T_all[seeds[si]], H[cand[ci]], T_all[nonseed[pi]]
        d_s_syn = nn_distances(S, xs, 1)[:, 0]
        d_c_syn = nn_distances(S, xc, 1)[:, 0]
        d_p_syn = nn_distances(S, xp, 1)[:, 0]
        v, c = [], []
        idx = np.arange(len(si))
        for _ in range(cfg.n_repeats):
            b = _boot(rng, idx)
            v.append(paired_auc(d_s_syn[b], d_c_syn[b]))
            c.append(paired_auc(d_p_syn[b], d_c_syn[b]))
        metrics["seed_mia_auc"] = _e("seed_mia_auc", v, c, len(np.unique(seeds[si])))
    matched = set(LTa[seeds[si]]) if len(si) >= 2 else set()
    for t in seed_types:
        if t not in matched:
            unchecked.setdefault(t, []).append(
                "seed_mia_auc: no seed of the type in the matched pairs")
    # share of seeded synthetic cells whose nearest train cell is their own seed
    if space.provenance is not None and (space.provenance >= 0).any():
        seeded = np.flatnonzero(space.provenance >= 0)
        if len(seeded) > cap:
            seeded = np.sort(rng.permutation(seeded)[:cap])
        own = space.provenance[seeded]
        _, nn_idx = nn_search(T_all, S[seeded], 1)
        nn_idx = nn_idx[:, 0]
        lab = L["synthetic"][seeded]
        groups = _groups(lab)
        v, c = [], []
        idx = np.arange(len(seeded))
        for g in groups:
            if len(np.unique(own[g])) < 2:
                unchecked.setdefault(str(lab[g[0]]), []).append(
                    "seed_nn_share: one seed only, so its shuffled control equals its value")
        for _ in range(cfg.n_repeats):
            b = _boot(rng, idx)
            shuffled = own.copy()
            for g in groups:  # shuffle the seed assignment within each type
                shuffled[g] = own[rng.permutation(g)]
            v.append(float(np.mean(nn_idx[b] == own[b])))
            c.append(float(np.mean(nn_idx[b] == shuffled[b])))
        metrics["seed_nn_share"] = _e("seed_nn_share", v, c, len(np.unique(own)))
        sub["seeded_synthetic"] = len(seeded)
    log.done("seed_mia_auc", "seed_nn_share", group="seed_privacy")


def headline(space: Space, cfg: EvaluateConfig, *, prefix: str = "", privacy: bool = True,
             per_type: bool = True, steps: StepProgress | None = None) -> tuple[dict, dict, dict, dict]:
    """Every metric of *space* (a whole file or one condition's cells).

    Returns ``(metrics, subsample, timings, aux)``; ``aux`` holds per-type results.
    """
    metrics: dict[str, dict] = {}
    timings: dict[str, float] = {}
    sub: dict[str, int] = {}
    unchecked: dict[str, list[str]] = {}  # type -> privacy checks that could not run on it
    log = _Log(metrics, timings, prefix, steps)
    _two_sample(space, cfg, log, metrics, sub)
    aux = {"agreement": _agreement(space, cfg, log, metrics, sub), "unchecked": unchecked}
    if per_type:
        aux["per_type"] = _per_type(space, cfg, log, metrics, sub, unchecked)
    _utility(space, cfg, log, metrics, sub)
    if privacy:
        _pooled_privacy(space, cfg, log, metrics, sub)
        _seed_metrics(space, cfg, log, metrics, sub, unchecked)
    order = [k for k in METRIC_NAMES if k in metrics]
    return {k: metrics[k] for k in order}, sub, timings, aux


def evaluate_space(space: Space, config: EvaluateConfig, steps: StepProgress | None = None) -> Result:
    """Compute every metric and its control on a prepared :class:`Space`; *steps*: the stage's
    progress (:func:`step_progress`), advanced metric group by metric group."""
    from ._conditions import condition_section

    cfg = config
    L = space.labels
    nT, nH, nS = space.n("train"), space.n("holdout"), space.n("synthetic")
    types = real_types(L)
    rare = space.rare
    syn_types = set(L["synthetic"])
    missing = [t for t in types if t not in syn_types]
    if missing:
        logger.warning("types present in real cells but absent from synthetic: %s", missing)
    if cfg.n_repeats < 2:
        logger.warning("n_repeats=1: metrics get no std and no interval")

    metrics, sub, timings, aux = headline(space, cfg, steps=steps)

    log = _Log(metrics, timings, steps=steps)
    log.start("per-type MMD", "per_type_mmd")
    rng = _rng(cfg.seed, "per_type_mmd")
    scales = space.mmd_scales
    P = space.pca
    mmd_t = {
        t: per_type_mmd(
            P["holdout"][L["holdout"] == t], P["synthetic"][L["synthetic"] == t], scales,
            max_cells=cfg.per_type_max_cells, n_repeats=cfg.n_repeats, rng=rng,
        )
        for t in types
    }
    log.done("per_type_mmd")
    table = per_type_table(L, aux["agreement"], mmd_t, rare, aux["per_type"])

    unchecked = {t: aux["unchecked"][t] for t in sorted(aux["unchecked"])}
    ok, reasons, notes = privacy_verdict(metrics, {
        "seed_inputs": space.seed_inputs,
        "n_seeds": 0 if space.seed is None else int(space.seed.sum()),
        "seeded_synthetic": 0 if space.provenance is None else int((space.provenance >= 0).sum()),
        "seeds": sub.get("seeds"),
        "seed_pairs": sub.get("seed_pairs"),
        "unchecked": unchecked,
    })
    if not ok:
        for r in reasons:
            logger.warning("privacy: %s", r)
    if unchecked:
        logger.warning("privacy: types with synthetic cells on which a per-type or seed check "
                       "could not run (unverified; see privacy_notes): %s", ", ".join(unchecked))
    conditions, per_condition = None, None
    if space.conditions is not None:
        t0 = time.perf_counter()
        if steps is not None and "conditions" in steps.weights:
            steps.begin("conditions", "per-condition metrics", announce=False)
        conditions, per_condition = condition_section(space, cfg)
        if steps is not None:
            steps.end()
        timings["conditions"] = round(time.perf_counter() - t0, 3)

    return Result(
        metrics=metrics,
        per_type=table,
        rare_types=rare,
        missing_types=missing,
        n_cells={"real_train": nT, "real_holdout": nH, "synthetic": nS},
        subsample={**sub, "pca_fit": space.pca_fit_cells, "train_reference": len(space.train_ref)},
        holdout_recall=dict(zip(table["cell_type"], table["agreement_control"])),
        timings=timings,
        privacy_ok=ok,
        privacy_reasons=reasons,
        privacy_notes=notes,
        privacy_unchecked_types=list(unchecked),
        rare_n_real_holdout={t: int((L["holdout"] == t).sum()) for t in rare},
        conditions=conditions,
        per_condition=per_condition,
    )


def params_of(config: EvaluateConfig) -> dict:
    d = asdict(config)
    d["mmd_factors"] = list(config.mmd_factors)
    d["privacy_thresholds"] = dict(PRIVACY_THRESHOLDS)
    d["judge"] = "logistic regression trained on real holdout cells (never on train cells or seeds)"
    return d


__all__ = ["BETTER", "METRIC_NAMES", "Result", "evaluate_space", "headline", "params_of",
           "summarise", "half", "strat_boot"]
