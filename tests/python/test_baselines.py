"""garage.baselines: the within-type kNN interpolation baseline and the exact-copy check."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from garage import constants as C
from garage.baselines import exact_copy_mask, knn_interpolation
from garage.errors import GarageError


@pytest.fixture(scope="module")
def train_small(preprocessed_small):
    a = ad.read_h5ad(preprocessed_small)
    return a[a.obs[C.OBS_SPLIT] == C.SPLIT_TRAIN].copy()


def test_knn_interpolation_schema_and_counts(train_small):
    n_per = {"B": 30, "DC": 20, "Platelet": 7}
    syn, prov = knn_interpolation(train_small, C.OBS_LABEL, n_per, k=5, seed=0, with_provenance=True)
    assert syn.n_obs == 57 and list(syn.var_names) == list(train_small.var_names)
    assert sp.issparse(syn.X) and syn.X.dtype == np.float32
    assert np.array_equal(syn.X.data, np.rint(syn.X.data)) and syn.X.data.min() >= 0
    assert syn.obs[C.OBS_CELL_TYPE].value_counts()[list(n_per)].to_dict() == n_per
    assert syn.obs[C.OBS_SYNTHETIC].all()
    # anchors are real train cells of the same type, named only in the private provenance
    assert not set(train_small.obs_names) & set(syn.obs_names) and C.OBS_SEED_ID not in syn.obs
    lab = train_small.obs[C.OBS_LABEL].astype(str)
    assert (prov["synthetic_cell"].to_numpy() == syn.obs_names.to_numpy()).all()
    anchors = prov[C.OBS_SEED_ID].to_numpy()
    assert (lab.loc[anchors].to_numpy() == syn.obs[C.OBS_CELL_TYPE].astype(str).to_numpy()).all()
    # realistic counts: library sizes of the same order as the real type, no empty cells
    lib = np.asarray(syn.X.sum(1)).ravel()
    assert lib.min() > 0
    real_lib = np.asarray(train_small.layers[C.LAYER_COUNTS].sum(1)).ravel()
    assert 0.5 < np.median(lib) / np.median(real_lib) < 2.0
    assert exact_copy_mask(syn.X, train_small.layers[C.LAYER_COUNTS]).sum() == 0
    assert syn.uns[C.UNS_KEY]["method"] == "knn_interpolation"


def test_knn_interpolation_deterministic_and_array_labels(train_small):
    labels = train_small.obs[C.OBS_LABEL].astype(str).to_numpy()
    a = knn_interpolation(train_small, labels, {"NK": 10}, seed=3)
    b = knn_interpolation(train_small, C.OBS_LABEL, {"NK": 10}, seed=3)
    assert (a.X != b.X).nnz == 0


def test_knn_interpolation_rejects_unknown_type(train_small):
    with pytest.raises(GarageError, match="unknown cell types"):
        knn_interpolation(train_small, C.OBS_LABEL, {"Neuron": 3})


def test_exact_copy_mask_finds_copies():
    train = sp.csr_matrix(np.array([[0, 1, 2], [3, 0, 0]], dtype=np.float32))
    syn = np.array([[0, 1, 2], [0, 1, 3], [3, 0, 0]], dtype=np.float32)
    assert exact_copy_mask(syn, train).tolist() == [True, False, True]
