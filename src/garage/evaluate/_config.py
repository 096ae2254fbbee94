"""Evaluation options (one frozen dataclass, saved in the metrics JSON)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .. import constants as C
from ..errors import GarageError


@dataclass(frozen=True)
class EvaluateConfig:
    """Options of ``garage evaluate`` (recorded under ``params`` in the metrics JSON).

    Parameters
    ----------
    seed
        Feeds every random draw (subsamples, CV folds, Leiden, UMAP).
    n_repeats
        Draws of the real cells (random halves of the holdout, or stratified
        bootstrap resamples); every metric reports the mean over draws, their
        standard deviation and a 95% interval (``value ± t(0.975, B-1) * std``).
        One draw gives no interval.
    max_cells
        Cells per side in one balanced subsample (C2ST, MMD, gene statistics, KS);
        a draw never takes more than half of the real holdout cells.
    n_pcs
        Components of the shared PCA (fitted on real train cells).
    pca_fit_fraction
        Fraction of every type's train cells the PCA is fitted on; the rest are
        the control's train side (both sides of a comparison then lie outside the
        PCA fit, see ``_space``).
    c2st_classifier
        ``knn`` (fast, default) or ``rf`` (random forest) for the classifier two-sample test.
    c2st_neighbors
        k of the kNN C2ST.
    cv_folds
        Cross-validation folds of the C2ST.
    c2st_draws
        Full-size draws (a fresh subsample of the synthetic and train cells and fresh CV folds
        each) whose mean is the C2ST value and its control's.  An unchanged file's C2ST AUC
        moved by 0.014 (sd, 4 files x 5 evaluation seeds) at the earlier 3 draws and by 0.006 at
        20, about as much as the training changes the benchmarks compared
        (``bench/results/fidelity_notes.md``, round 20).  The control still moves with the
        seed's PCA and train reference, so a gap read alone keeps about 0.01 of evaluation sd;
        methods evaluated with one seed share the control.  The interval still comes from the
        *n_repeats* half-holdout draws.
    mmd_factors
        Multipliers of the median squared distance of real cells; one RBF bandwidth each.
    wasserstein_max_cells
        Cells per side for exact EMD (cost grows ~ n^3).
    wasserstein_n_pcs
        Leading PCs the EMD is computed on.  The sampling floor of an empirical
        Wasserstein distance grows with dimension (~ n^(-1/d)); in 50 PCs it swamps
        real differences (on the PBMC subset a clear shift even *lowered* it), in
        the leading 20 the same shift shows.
    leiden_resolution, leiden_neighbors, leiden_max_cells
        Leiden on a kNN graph of PCA coordinates, on equal-sized subsamples of
        synthetic and real holdout cells.
    rare_threshold
        Fallback only: used when the real file has no ``uns['garage']['rare_types']``
        (files written before preprocess recorded the list).
    privacy_max_cells
        At most this many cells of each query set (synthetic, holdout, train
        members, seeds) enter a nearest-neighbour search; the reference sets are
        every train (or synthetic) cell, so the cost is linear in cells
        (``exact_copies`` always hashes every synthetic cell).
    pca_max_cells
        At most this many PCA-fit train cells are densified to fit the PCA
        (stratified by type; rare types keep all their cells).
    classifier_max_cells
        At most this many cells train one cell-type classifier (judge, TSTR).
    per_type_min_cells, per_type_max_cells
        Per-type C2ST needs at least ``per_type_min_cells`` cells per side in a draw
        (else NA); per-type pools hold at most ``per_type_max_cells`` cells per set.
    seed_neighbors
        k of the centrality (mean distance to the k nearest real cells) that matches
        each seed with a non-member of the same type in ``seed_mia_auc``.
    condition_min_cells
        A type x condition group enters the condition effect with at least this many
        cells in each of real holdout, real train and synthetic cells.
    per_condition
        With a condition in the real file, compute the headline metrics per condition.
    plots
        Write ``PREFIX.umap.png`` and ``PREFIX.per_type.png``.
    umap_max_cells
        Cells per side (real, synthetic) in the UMAP picture.
    """

    seed: int = 0
    n_repeats: int = 10
    max_cells: int = 2000
    n_pcs: int = 50
    pca_fit_fraction: float = 0.5
    c2st_classifier: Literal["knn", "rf"] = "knn"
    c2st_neighbors: int = 15
    cv_folds: int = 5
    c2st_draws: int = 20
    mmd_factors: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    wasserstein_max_cells: int = 1000
    wasserstein_n_pcs: int = 20
    leiden_resolution: float = 1.0
    leiden_neighbors: int = 15
    leiden_max_cells: int = 3000
    rare_threshold: float = C.RARE_THRESHOLD
    privacy_max_cells: int = 5000
    pca_max_cells: int = 10000
    classifier_max_cells: int = 5000
    per_type_min_cells: int = 10
    per_type_max_cells: int = 500
    seed_neighbors: int = 10
    condition_min_cells: int = 10
    per_condition: bool = True
    plots: bool = True
    umap_max_cells: int = 2000

    def validate(self) -> None:
        if self.n_repeats < 1:
            raise GarageError(f"--n-repeats must be >= 1, got {self.n_repeats}", "pass e.g. 3")
        if self.max_cells < 10:
            raise GarageError(f"--max-cells must be >= 10, got {self.max_cells}", "pass e.g. 2000")
        if self.n_pcs < 2:
            raise GarageError(f"n_pcs must be >= 2, got {self.n_pcs}", "pass e.g. 50")
        if not 0.0 < self.pca_fit_fraction < 1.0:
            raise GarageError(
                f"pca_fit_fraction must be in (0, 1), got {self.pca_fit_fraction}", "pass 0.5"
            )
        if self.c2st_classifier not in ("knn", "rf"):
            raise GarageError(
                f"unknown C2ST classifier {self.c2st_classifier!r}", "use knn or rf"
            )
        if self.c2st_neighbors < 1 or self.leiden_neighbors < 2:
            raise GarageError("neighbour counts must be >= 1 (Leiden: >= 2)", "pass e.g. 15")
        if self.c2st_draws < 1:
            raise GarageError(f"--c2st-draws must be >= 1, got {self.c2st_draws}", "pass e.g. 20")
        if self.cv_folds < 2:
            raise GarageError(f"cv_folds must be >= 2, got {self.cv_folds}", "pass e.g. 5")
        if not self.mmd_factors or any(f <= 0 for f in self.mmd_factors):
            raise GarageError("mmd_factors must be positive numbers", "pass e.g. (0.5, 1, 2)")
        if self.wasserstein_n_pcs < 1:
            raise GarageError("wasserstein_n_pcs must be >= 1", "pass e.g. 20")
        if self.wasserstein_max_cells < 2 or self.leiden_max_cells < 10:
            raise GarageError(
                "wasserstein_max_cells must be >= 2 and leiden_max_cells >= 10", "raise them"
            )
        if self.leiden_resolution <= 0:
            raise GarageError("--leiden-resolution must be > 0", "pass e.g. 1.0")
        if not 0.0 < self.rare_threshold < 1.0:
            raise GarageError(
                f"--rare-threshold must be in (0, 1), got {self.rare_threshold}", "pass e.g. 0.03"
            )
        if self.privacy_max_cells < 2 or self.umap_max_cells < 10:
            raise GarageError("privacy_max_cells/umap_max_cells too small", "raise them")
        if self.pca_max_cells < 10 or self.classifier_max_cells < 10:
            raise GarageError("pca_max_cells/classifier_max_cells must be >= 10", "raise them")
        if self.per_type_min_cells < 2 or self.per_type_max_cells < self.per_type_min_cells:
            raise GarageError(
                "per_type_min_cells must be >= 2 and <= per_type_max_cells", "pass e.g. 10 and 500"
            )
        if self.seed_neighbors < 1 or self.condition_min_cells < 2:
            raise GarageError("seed_neighbors must be >= 1, condition_min_cells >= 2", "raise them")


# fast settings for `garage run --profile test` and the Nextflow test profile
TEST_OVERRIDES: dict = {
    "n_repeats": 5,
    "max_cells": 500,
    "wasserstein_max_cells": 300,
    "leiden_max_cells": 500,
    "privacy_max_cells": 2000,
    "classifier_max_cells": 2000,
    "umap_max_cells": 500,
}
