"""How each GARAGE metric is titled, described and coloured in the report.

Pure data (no MultiQC import).  ``better`` (the default direction) comes from the
metrics contract in ``garage.constants``; the value a metrics file gives wins when present.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .. import constants as C


@dataclass(frozen=True)
class MetricSpec:
    """Display settings of one metric.

    Parameters
    ----------
    title
        Short column title.
    description
        What the metric measures (one sentence, no trailing full stop).
    control
        What the control value is (real cells against real cells).
    scale
        MultiQC colour scale (``-rev`` where lower is better).
    vmin, vmax
        Colour-scale limits (``None``: from the data).
    decimals
        Digits after the decimal point.
    group
        Section of the metrics table: ``fidelity``, ``biology``, ``utility``, ``privacy``.
    """

    title: str
    description: str
    control: str
    scale: str
    vmin: float | None = None
    vmax: float | None = None
    decimals: int = 3
    group: str = "fidelity"
    short: str | None = None
    better: str = "closer to control"

    @property
    def control_title(self) -> str:
        """Title of the control column (kept short so tables stay narrow)."""
        return f"{self.short or self.title} control"

    @property
    def fmt(self) -> str:
        return "{:,.%df}" % self.decimals


_RR = "real train vs real holdout cells"
_HALVES = "one half of the real holdout cells standing in for synthetic cells, against the other half"

METRIC_SPECS: dict[str, MetricSpec] = {
    "c2st_auc": MetricSpec(
        "C2ST AUC",
        "Classifier two-sample test: cross-validated AUC of a classifier telling synthetic from held-out "
        "real cells in PCA space; 0.5 means indistinguishable",
        f"the same test on {_RR}",
        "RdYlGn-rev", 0.5, 1.0, short="C2ST",
    ),
    "mmd_rbf": MetricSpec(
        "MMD",
        "Maximum mean discrepancy (RBF kernels) between synthetic and held-out real cells in PCA space",
        f"MMD of {_RR}", "RdYlGn-rev", 0.0, 0.05, 4,
    ),
    "wasserstein_pca": MetricSpec(
        "Wasserstein",
        "Exact Wasserstein (earth mover's) distance between synthetic and held-out real cells in PCA space",
        f"distance of {_RR}", "RdYlGn-rev", 0.0, None,
    ),
    "mean_corr": MetricSpec(
        "Mean corr", "Pearson correlation of per-gene means, synthetic vs held-out real cells",
        f"the correlation of {_RR}", "RdYlGn", 0.0, 1.0,
    ),
    "var_corr": MetricSpec(
        "Var corr", "Pearson correlation of per-gene variances, synthetic vs held-out real cells",
        f"the correlation of {_RR}", "RdYlGn", 0.0, 1.0,
    ),
    "zero_frac_corr": MetricSpec(
        "Zero-frac corr",
        "Pearson correlation of per-gene zero (dropout) fractions, synthetic vs held-out real cells",
        f"the correlation of {_RR}", "RdYlGn", 0.0, 1.0,
    ),
    "libsize_ks": MetricSpec(
        "Library KS",
        "Kolmogorov-Smirnov statistic between library-size distributions, synthetic vs held-out real cells",
        f"the statistic of {_RR}", "RdYlGn-rev", 0.0, 1.0,
    ),
    "ari": MetricSpec(
        "ARI", "Adjusted Rand index between Leiden clusters of the synthetic cells and their cell-type labels",
        "the same on real holdout cells", "RdYlGn", 0.0, 1.0, group="biology",
    ),
    "nmi": MetricSpec(
        "NMI",
        "Normalised mutual information between Leiden clusters of the synthetic cells and their labels",
        "the same on real holdout cells", "RdYlGn", 0.0, 1.0, group="biology",
    ),
    "rare_agreement": MetricSpec(
        "Rare agreement",
        "Fraction of synthetic cells of a rare type that a classifier trained on real cells assigns to that "
        "type, averaged over the rare types (a rare type with no synthetic cells counts 0)",
        "the classifier's recall of the rare types on real holdout cells",
        "RdYlGn", 0.0, 1.0, group="biology", short="Rare",
    ),
    "type_agreement": MetricSpec(
        "Type agreement",
        "Fraction of all synthetic cells that a classifier trained on real cells assigns to their own type",
        "the classifier's accuracy on real holdout cells", "RdYlGn", 0.0, 1.0, group="biology",
    ),
    "rare_spread_ratio": MetricSpec(
        "Rare spread",
        "Spread of synthetic rare cells: mean distance to their type's real centroid over that of real "
        "held-out cells, averaged over rare types; below 0.8 means prototypical (under-dispersed) rare "
        "cells, above 1.2 over-dispersed ones",
        "the same ratio for real train cells", "RdYlGn", 0.5, 1.5, group="biology", short="Spread",
    ),
    "tstr_macro_f1": MetricSpec(
        "TSTR F1", "Train on synthetic, test on real: macro F1 of a cell-type classifier on holdout cells",
        "train on real, test on real: TRTR", "RdYlGn", 0.0, 1.0, group="utility",
        short="TSTR",
    ),
    "tstr_rare_f1": MetricSpec(
        "TSTR rare F1", "Train on synthetic, test on real: macro F1 over the rare cell types",
        "train on real, test on real: TRTR", "RdYlGn", 0.0, 1.0, group="utility",
    ),
    "augment_macro_f1": MetricSpec(
        "Augment F1",
        "Macro F1 on real holdout cells of a classifier trained on real plus synthetic cells",
        "trained on real cells only", "RdYlGn", 0.0, 1.0, group="utility",
    ),
    "dcr_ratio": MetricSpec(
        "DCR ratio",
        "Distance to closest record: median distance of synthetic cells to their nearest training cell, "
        "over that of held-out real cells; well below 1 means synthetic cells sit closer to training cells "
        "than unseen real cells do (memorisation)",
        _HALVES, "RdYlGn", 0.5, 1.0, group="privacy", short="DCR",
    ),
    "exact_copies": MetricSpec(
        "Exact copies", "Synthetic cells whose counts equal those of a training cell",
        "held-out real cells whose counts equal those of a training cell", "Reds", 0.0, None, 0,
        group="privacy", short="Copies",
    ),
    "nndr_ratio": MetricSpec(
        "NNDR ratio",
        "Nearest-neighbour distance ratio (nearest / second-nearest training cell) of synthetic cells, over "
        "that of held-out real cells; well below 1 flags synthetic cells that copy one training cell",
        _HALVES, "RdYlGn", 0.5, 1.0, group="privacy", short="NNDR",
    ),
    "mia_auc": MetricSpec(
        "MIA AUC",
        "Membership-inference attack: AUC of telling training from held-out real cells by their distance "
        "to the nearest synthetic cell; 0.5 means no membership leak",
        _HALVES, "RdYlGn-rev", 0.5, 1.0, group="privacy", short="MIA",
    ),
    "rare_dcr_ratio": MetricSpec(
        "Rare DCR ratio",
        "Distance to closest record for the rare types only: median distance of synthetic rare cells to "
        "their nearest training cell over that of held-out rare cells (as many of each per type)",
        "real train cells of the rare types (distance to the nearest other training cell)",
        "RdYlGn", 0.5, 1.0, group="privacy", short="Rare DCR",
    ),
    "seed_mia_auc": MetricSpec(
        "Seed MIA AUC",
        "Seed membership attack: AUC of telling GAT seed cells from held-out cells of the same type and "
        "centrality by their distance to the nearest synthetic cell; above the control means the "
        "generator re-emits its seeds",
        "the same attack against real non-seed training cells instead of synthetic cells (the null, "
        "with the same hub effect)", "RdYlGn-rev", 0.3, 1.0, group="privacy", short="Seed MIA",
    ),
    "seed_nn_share": MetricSpec(
        "Seed NN share",
        "Share of seeded synthetic cells whose nearest training cell is their own seed",
        "the same share for a seed assignment shuffled within each type (chance)",
        "RdYlGn-rev", 0.0, 1.0, group="privacy", short="Seed NN",
    ),
}
# the direction of each metric is the contract's, not a second copy of it
METRIC_SPECS = {k: replace(v, better=C.METRIC_BETTER[k]) for k, v in METRIC_SPECS.items()}

GROUP_TITLES: dict[str, str] = {
    "fidelity": "Distribution fidelity",
    "biology": "Cell types",
    "utility": "Downstream utility",
    "privacy": "Privacy",
    "other": "Other",
}

#: Columns of the General Statistics table, in order.
GENERAL_STATS_METRICS: tuple[str, ...] = (
    "c2st_auc",
    "mmd_rbf",
    "rare_agreement",
    "tstr_macro_f1",
    "dcr_ratio",
    "exact_copies",
)


def spec_for(name: str) -> MetricSpec:
    """The spec of *name*; unknown metrics (from a newer ``garage evaluate``) get a neutral one."""
    return METRIC_SPECS.get(
        name,
        MetricSpec(name, name.replace("_", " "), "see garage evaluate", "GnBu", group="other"),
    )
