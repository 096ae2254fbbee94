"""Node features, normalised once, handed out by rows: dense (PCA) or sparse (HVG).

HVG features stay a CSR matrix from the file to the first GAT layer: rows are
taken for a batch or an inference chunk and passed on as a torch sparse CSR
tensor, which ``GATConv``'s linear layer multiplies directly.  No dense cells x
genes copy is ever made, so memory stays ``O(nnz)``.  Sparse features are
scaled but not centred (centring would densify them); a constant shift of the
inputs is absorbed by the first layer (GATConv's attention softmax is invariant
to it and its bias absorbs the shift of the output), so the model family is the
same.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor


def _csr_tensor(m: sp.csr_matrix) -> Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": it is used read-only
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(m.indptr.astype(np.int64)),
            torch.from_numpy(m.indices.astype(np.int64)),
            torch.from_numpy(m.data.astype(np.float32, copy=False)),
            size=m.shape,
        )


class NodeFeatures:
    """``(x - center) / scale`` for every cell, dense or sparse (sparse: ``center = 0``).

    Build with :meth:`fit` (raw features) or :meth:`from_tensor` (already
    normalised); take rows with :meth:`rows`.
    """

    def __init__(self, *, dense: Tensor | None = None, sparse: sp.csr_matrix | None = None,
                 center: np.ndarray, scale: float) -> None:
        if (dense is None) == (sparse is None):
            raise ValueError("pass exactly one of dense, sparse")
        self._dense, self._sparse = dense, sparse
        self.center = np.asarray(center, dtype=np.float32)
        self.scale = float(scale)

    @classmethod
    def fit(cls, x) -> "NodeFeatures":
        """Normalise raw features *x* ``[N, F]`` (numpy array or scipy sparse).

        Dense: centre every column and divide by the global standard deviation.
        Sparse: divide by the same global standard deviation (computed from
        column moments, without densifying) and do not centre.
        """
        if sp.issparse(x):
            m = sp.csr_matrix(x, dtype=np.float32, copy=True)
            m.sort_indices()
            mean = np.asarray(m.mean(axis=0, dtype=np.float64)).ravel()
            sq = np.asarray(m.multiply(m).mean(axis=0, dtype=np.float64)).ravel()
            var = float(np.mean(np.maximum(sq - mean**2, 0.0))) if m.shape[1] else 0.0
            scale = float(np.sqrt(var)) or 1.0
            m.data /= np.float32(scale)
            return cls(sparse=m, center=np.zeros(m.shape[1], np.float32), scale=scale)
        d = np.asarray(x, dtype=np.float32)
        center = d.mean(axis=0, dtype=np.float64).astype(np.float32)
        d = d - center
        scale = float(d.std(dtype=np.float64)) or 1.0
        d = d / np.float32(scale)
        return cls(dense=torch.from_numpy(np.ascontiguousarray(d)), center=center, scale=scale)

    @classmethod
    def from_tensor(cls, x: Tensor) -> "NodeFeatures":
        """Wrap already-normalised dense features."""
        return cls(dense=x, center=np.zeros(x.shape[1], np.float32), scale=1.0)

    @property
    def is_sparse(self) -> bool:
        return self._sparse is not None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self._sparse.shape) if self.is_sparse else tuple(self._dense.shape)

    @property
    def bytes_per_row(self) -> float:
        """Memory of one row as handed to the model (float32 dense, or CSR value + index)."""
        if self.is_sparse:
            return 12.0 * self._sparse.nnz / max(1, self._sparse.shape[0]) + 8.0
        return 4.0 * self.shape[1]

    def rows(self, idx: Tensor) -> Tensor:
        """Rows *idx* (global ids, in that order): a dense or a sparse CSR tensor."""
        if self.is_sparse:
            return _csr_tensor(self._sparse[np.asarray(idx, dtype=np.int64)])
        return self._dense[idx]

    def all(self) -> Tensor:
        return _csr_tensor(self._sparse) if self.is_sparse else self._dense

    def permuted(self, perm: np.ndarray) -> "NodeFeatures":
        """The same features with row ``perm[k]`` as row ``k``."""
        perm = np.asarray(perm, dtype=np.int64)
        if self.is_sparse:
            return NodeFeatures(sparse=self._sparse[perm], center=self.center, scale=self.scale)
        return NodeFeatures(dense=self._dense[torch.from_numpy(perm)].contiguous(),
                            center=self.center, scale=self.scale)
