"""The one log-normalisation shared by preprocess, the GAN critic and evaluate.

``log1p(counts / rowsum(counts) * TARGET_SUM)`` over the HVGs, so real and
synthetic cells (which only exist on HVGs) land in exactly the same space.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .constants import TARGET_SUM


def log_normalize(counts, target_sum: float = TARGET_SUM):
    """Counts (cells x HVGs, dense or sparse) -> log-normalised float32, same sparsity."""
    if sp.issparse(counts):
        counts = sp.csr_matrix(counts, dtype=np.float32)
        lib = np.asarray(counts.sum(axis=1)).ravel()
        out = sp.diags((target_sum / np.maximum(lib, 1.0)).astype(np.float32)) @ counts
        out = sp.csr_matrix(out, dtype=np.float32)
        np.log1p(out.data, out=out.data)
        return out
    counts = np.asarray(counts, dtype=np.float32)
    lib = counts.sum(axis=1, keepdims=True)
    return np.log1p(counts * (target_sum / np.maximum(lib, 1.0))).astype(np.float32)


def log_normalize_torch(counts, target_sum: float = TARGET_SUM):
    """Same formula on a torch tensor (differentiable; for the GAN)."""
    lib = counts.sum(dim=1, keepdim=True).clamp_min(1.0)
    return (counts * (target_sum / lib)).log1p()
