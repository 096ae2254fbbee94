"""Every AnnData key and file suffix the stages exchange, fixed in one place.

Stages never spell these strings themselves; they import them from here so a
rename is one edit and cannot drift between preprocess, GAT, GAN and evaluate.
"""

from __future__ import annotations

# --- AnnData keys ---------------------------------------------------------
LAYER_COUNTS = "counts"  # raw integer counts (HVGs only after preprocess)
OBS_LABEL = "garage_label"  # the label used by every stage (str categories)
OBS_CONDITION = "garage_condition"  # optional condition/batch covariate (str categories)
OBS_SPLIT = "garage_split"  # "train" | "holdout"
SPLIT_TRAIN = "train"
SPLIT_HOLDOUT = "holdout"
OBS_LIBSIZE = "garage_library_size"  # total counts over ALL genes, before HVG subset
OBSM_PCA = "X_pca"
OBSP_CONNECTIVITIES = "connectivities"
OBSP_DISTANCES = "distances"
VAR_HVG = "highly_variable"
OBS_SCORE = "garage_score"  # GAT representativeness score
OBS_SEED = "garage_seed"  # bool: selected as a seed cell
OBSM_GAT = "X_gat"  # GAT node embedding
UNS_KEY = "garage"  # parameters, versions, provenance
# uns['garage'] entries every later stage reads (decided once, in preprocess)
UNS_RARE_TYPES = "rare_types"  # list of rare types: the one definition of "rare"
UNS_LABEL_KEY = "label_key"  # the user's label column name ("" when Leiden)
UNS_CONDITION_KEY = "condition_key"  # the user's condition column name ("" when none)

# synthetic cells (PREFIX.synthetic.h5ad is shareable: it names no real cell)
OBS_CELL_TYPE = "cell_type"
OBS_SYN_CONDITION = "condition"  # the condition of a synthetic cell (models with a covariate)
OBS_SYNTHETIC = "synthetic"
# seed provenance lives only in the PRIVATE PREFIX.provenance.tsv: lines starting with '#'
# are a header (the first says PRIVATE), then TSV columns synthetic_cell, cell_type, seed_cell
# (the real obs name of the seed cell, "" when the cell was generated from noise only)
OBS_SEED_ID = "seed_cell"
PROVENANCE_COLUMNS = ("synthetic_cell", "cell_type", OBS_SEED_ID)

# --- file suffixes (PREFIX + suffix) ---------------------------------------
SUFFIX_PREPROCESSED = ".preprocessed.h5ad"
SUFFIX_SEEDS = ".seeds.h5ad"
SUFFIX_GAT_MODEL = ".gat.pt"
SUFFIX_GAT_LOG = ".gat_log.tsv"
SUFFIX_SYNTHETIC = ".synthetic.h5ad"
SUFFIX_GENERATOR = ".generator.pt"
SUFFIX_GAN_LOG = ".gan_log.tsv"
SUFFIX_PROVENANCE = ".provenance.tsv"  # PRIVATE: which seed cell each synthetic cell came from
SUFFIX_GENERATED = ".generated.h5ad"
SUFFIX_GAT_CKPT = ".gat.ckpt.pt"  # periodic checkpoints, deleted after success
SUFFIX_GAN_CKPT = ".gan.ckpt.pt"
SUFFIX_METRICS = ".garage_metrics.json"
SUFFIX_PER_TYPE = ".per_type.tsv"
SUFFIX_UMAP = ".umap.png"
SUFFIX_PER_TYPE_PLOT = ".per_type.png"

# a type below this fraction of all cells after QC is rare; preprocess decides it once and
# stores the list in uns['garage']['rare_types'], which GAT, GAN, evaluate and the report read
RARE_THRESHOLD = 0.03

# label used when no --label-key is given and Leiden clusters stand in
LABEL_SOURCE_LEIDEN = "leiden"

# --- the one normalisation every stage uses -------------------------------
# X = log1p(counts / sum(counts over the HVGs) * TARGET_SUM), see garage._norm
TARGET_SUM = 1e4

# --- the metrics contract (evaluate writes it, the MultiQC plugin reads it) --
#: metric name -> which direction is better, in report order
METRIC_BETTER: dict[str, str] = {
    "c2st_auc": "closer to 0.5",
    "mmd_rbf": "lower",
    "wasserstein_pca": "lower",
    "mean_corr": "higher",
    "var_corr": "higher",
    "zero_frac_corr": "higher",
    "libsize_ks": "lower",
    "ari": "closer to control",
    "nmi": "closer to control",
    "rare_agreement": "higher",
    "type_agreement": "higher",
    "rare_spread_ratio": "closer to 1",
    "tstr_macro_f1": "higher",
    "tstr_rare_f1": "higher",
    "augment_macro_f1": "higher",
    "dcr_ratio": "closer to 1",
    "exact_copies": "zero",
    "nndr_ratio": "closer to 1",
    "mia_auc": "closer to 0.5",
    "rare_dcr_ratio": "closer to 1",
    "seed_mia_auc": "closer to control",
    "seed_nn_share": "closer to control",
}
METRIC_NAMES: tuple[str, ...] = tuple(METRIC_BETTER)
PRIVACY_METRICS: tuple[str, ...] = (
    "dcr_ratio", "exact_copies", "nndr_ratio", "mia_auc", "rare_dcr_ratio", "seed_mia_auc",
    "seed_nn_share",
)
#: every metric entry holds these fields (ci_*: 95% interval; n_real: real holdout cells per draw)
METRIC_FIELDS: tuple[str, ...] = (
    "value", "std", "control", "control_std", "better", "ci_low", "ci_high", "control_ci_low",
    "control_ci_high", "n_real",
)
PER_TYPE_COLUMNS: tuple[str, ...] = (
    "cell_type", "n_real_train", "n_real_holdout", "n_synthetic", "frac_real",
    "frac_synthetic", "agreement", "mmd", "is_rare", "missing",
    # appended by the second wave (diagnosis and privacy per type)
    "agreement_ci_low", "agreement_ci_high", "agreement_control", "agreement_control_ci_low",
    "agreement_control_ci_high",
    "c2st", "c2st_ci_low", "c2st_ci_high", "c2st_control", "c2st_control_ci_low",
    "c2st_control_ci_high", "c2st_n",
    "spread_ratio", "spread_ratio_ci_low", "spread_ratio_ci_high", "spread_ratio_control",
    "dcr_ratio", "dcr_ratio_ci_low", "dcr_ratio_ci_high", "dcr_ratio_control",
)
#: PREFIX.per_condition.tsv (written only when the real file has a condition): one row per
#: condition x metric (cell_type "all"), plus one condition-effect row per type x condition
PER_CONDITION_COLUMNS: tuple[str, ...] = (
    "condition", "reference", "cell_type", "metric", "value", "std", "ci_low", "ci_high",
    "control", "control_std", "control_ci_low", "control_ci_high", "better", "n_real",
    "n_synthetic",
)
SUFFIX_PER_CONDITION = ".per_condition.tsv"
