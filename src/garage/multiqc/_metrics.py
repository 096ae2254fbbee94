"""How each GARAGE metric is titled, described and coloured in the report.

Pure data (no MultiQC import).  ``better`` is the default direction; the value a
metrics file gives wins when it is present.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    better
        Default direction, one of the ``better`` values of the metrics schema.
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
    better: str
    scale: str
    vmin: float | None = None
    vmax: float | None = None
    decimals: int = 3
    group: str = "fidelity"

    @property
    def fmt(self) -> str:
        return "{:,.%df}" % self.decimals


_RR = "real train vs real holdout"

METRIC_SPECS: dict[str, MetricSpec] = {
    "c2st_auc": MetricSpec(
        "C2ST AUC",
        "Classifier two-sample test: AUC of a classifier telling synthetic from held-out real cells; "
        "0.5 means indistinguishable",
        f"the same classifier on {_RR}",
        "closer to 0.5", "RdYlGn-rev", 0.5, 1.0,
    ),
    "mmd_rbf": MetricSpec(
        "MMD",
        "Maximum mean discrepancy (RBF kernel) between synthetic and held-out real cells in PCA space",
        f"MMD of {_RR}", "lower", "RdYlGn-rev", 0.0, None, 4,
    ),
    "wasserstein_pca": MetricSpec(
        "Wasserstein",
        "Wasserstein distance between synthetic and held-out real cells in PCA space",
        f"distance of {_RR}", "lower", "RdYlGn-rev", 0.0, None,
    ),
    "mean_corr": MetricSpec(
        "Mean corr", "Correlation of per-gene means, synthetic vs real",
        f"the correlation for {_RR}", "closer to 1", "RdYlGn", 0.0, 1.0,
    ),
    "var_corr": MetricSpec(
        "Var corr", "Correlation of per-gene variances, synthetic vs real",
        f"the correlation for {_RR}", "closer to 1", "RdYlGn", 0.0, 1.0,
    ),
    "zero_frac_corr": MetricSpec(
        "Zero-frac corr", "Correlation of per-gene zero (dropout) fractions, synthetic vs real",
        f"the correlation for {_RR}", "closer to 1", "RdYlGn", 0.0, 1.0,
    ),
    "libsize_ks": MetricSpec(
        "Library KS", "Kolmogorov-Smirnov statistic between library-size distributions",
        f"the statistic for {_RR}", "lower", "RdYlGn-rev", 0.0, 1.0,
    ),
    "ari": MetricSpec(
        "ARI", "Adjusted Rand index between cell-type labels and clusters of the synthetic cells",
        "the same on real holdout cells", "closer to control", "RdYlGn", 0.0, 1.0, group="biology",
    ),
    "nmi": MetricSpec(
        "NMI", "Normalised mutual information between cell-type labels and clusters of the synthetic cells",
        "the same on real holdout cells", "closer to control", "RdYlGn", 0.0, 1.0, group="biology",
    ),
    "rare_agreement": MetricSpec(
        "Rare agreement",
        "Mean per-type agreement of synthetic with real cells over the rare cell types (1 = identical)",
        f"the agreement of {_RR}", "higher", "RdYlGn", 0.0, 1.0, group="biology",
    ),
    "type_agreement": MetricSpec(
        "Type agreement", "Mean per-type agreement of synthetic with real cells over all cell types",
        f"the agreement of {_RR}", "higher", "RdYlGn", 0.0, 1.0, group="biology",
    ),
    "tstr_macro_f1": MetricSpec(
        "TSTR F1", "Train on synthetic, test on real: macro F1 of a cell-type classifier",
        "train on real, test on real (TRTR)", "higher", "RdYlGn", 0.0, 1.0, group="utility",
    ),
    "tstr_rare_f1": MetricSpec(
        "TSTR rare F1", "Train on synthetic, test on real: F1 over the rare cell types",
        "train on real, test on real (TRTR)", "higher", "RdYlGn", 0.0, 1.0, group="utility",
    ),
    "augment_macro_f1": MetricSpec(
        "Augment F1", "Macro F1 of a classifier trained on real plus synthetic cells, tested on real",
        "trained on real cells only", "higher", "RdYlGn", 0.0, 1.0, group="utility",
    ),
    "dcr_ratio": MetricSpec(
        "DCR ratio",
        "Distance to closest record: median distance of synthetic cells to their nearest training cell, "
        "over that of held-out real cells; below 1 means synthetic cells sit closer to training cells "
        "than unseen real cells do (memorisation)",
        "the ratio for held-out real cells themselves", "closer to 1", "RdYlGn", 0.0, 1.0, group="privacy",
    ),
    "exact_copies": MetricSpec(
        "Exact copies", "Synthetic cells identical to a training cell",
        "held-out real cells identical to a training cell", "zero", "Reds", 0.0, None, 0, group="privacy",
    ),
    "nndr_ratio": MetricSpec(
        "NNDR ratio",
        "Nearest-neighbour distance ratio of synthetic cells (1st / 2nd nearest training cell), over that "
        "of held-out real cells; below 1 flags synthetic cells that copy one training cell",
        "the ratio for held-out real cells themselves", "closer to 1", "RdYlGn", 0.0, 1.0, group="privacy",
    ),
    "mia_auc": MetricSpec(
        "MIA AUC",
        "Membership-inference attack: AUC of telling training from held-out real cells by their distance "
        "to synthetic cells; 0.5 means no membership leak",
        "the attack against random chance", "closer to 0.5", "RdYlGn-rev", 0.5, 1.0, group="privacy",
    ),
}

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
        MetricSpec(name, name.replace("_", " "), "see garage evaluate", "closer to control", "GnBu", group="other"),
    )
