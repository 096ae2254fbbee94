r"""The representativeness score, from the GAT's real attention coefficients.

For every GAT layer ``l`` and head ``h``, ``GATConv(..., return_attention_weights=True)``
in ``eval()`` / ``no_grad()`` returns ``(edge_index, alpha)``; ``alpha[e, h]`` is the
weight that target ``i = edge_index[1, e]`` gives to source ``j = edge_index[0, e]``
(softmax over the ``n_i = deg_i + 1`` incoming edges of ``i``, self-loop included,
so every target's weights sum to 1 per head).  Two attention centralities are
read from it (self-loops excluded, so an outlier that only attends to itself
does not score high):

    raw:       c_j = 1/(L*H) * sum_l sum_h sum_{e: src(e) = j, dst(e) = i != j} alpha_l[e, h]
    relative:  c_j = 1/(L*H*d_j) * sum_l sum_h sum_{e: src(e) = j, dst(e) = i != j}
                     alpha_l[e, h] * n_i                           (d_j = out-edges of j)

``raw`` is how much attention j's neighbours give to j.  Under uniform attention
every neighbour gives ``1 / n_i``, so ``raw`` is about ``deg_j / mean(n_i)``: it
mostly counts neighbours.  ``relative`` divides each coefficient by that uniform
share and averages over j's neighbours: 1 means "attended like everyone else",
2 "twice the uniform share", whatever the degree (a node with no out-edges gets
1).  Measured Spearman correlation with node degree over all cells (default
GAT, 100 epochs, training seeds 0 / 1; ``python -m bench.bench_gat
--seeds-report``, bench/results/gat_seeds.md):

    dataset (cells)           raw            relative
    pbmc3k (2,638)            0.845 / 0.848  -0.094 / -0.102
    sc_mixology (1,021)       0.921 / 0.922  -0.024 /  0.071
    pbmc68k_reduced (700)     0.612 / 0.632  -0.293 / -0.240
    kang_ifnb (1,556)         0.732 / 0.806  -0.330 / -0.264
    baron_mouse (1,886)       0.725 / 0.705  -0.121 / -0.216
    mouse_bladder (2,100)     0.663 / 0.673  -0.234 / -0.232
    worm_neuron (4,186)       0.703 / 0.686  -0.390 / -0.435
    bundled pbmc3k_small, test profile: 0.76 (raw), -0.003 (relative)

So ``raw`` mostly counts neighbours; ``relative`` is far less tied to degree
(a weak negative residue on some data) and ranks cells differently (Spearman
with ``raw`` 0.12-0.43; 41-92% of score seeds change).  Degree is not useless
for seeds, though: kNN hubs sit near their type's centre, so ``raw`` score seeds
lie closer to the other cells of their type than random seeds (mean
nearest-seed distance 0.96-0.98 of random's), while ``relative`` score seeds lie
farther (1.01-1.16).  Which one makes better synthetic cells is for the
fidelity benchmark to decide; the default stays ``raw``.

The score of cell ``j`` of type ``t`` uses ``GATConfig.centrality`` (default
``raw``, until the fidelity benchmark decides)::

    r_j = rank of c_j among the cells of type t / n_t      (in (0, 1], ties averaged)
    p_j = softmax(logits_j)[t]                             (classifier confidence)
    score_j = r_j ** lam * p_j ** (1 - lam)                (lam = score_weight, 0.5)

Both centralities are one vectorised PyG ``scatter`` of ``alpha`` over the
returned source index per layer (no loop over nodes).  Summing ``alpha`` by
*target* instead would give exactly 1 for every cell (softmax normalisation)
and carry no information; summing the edge index, as the prototype did, ranks
cells by node id.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch_geometric.utils import scatter


class AttentionCentrality:
    """Accumulates both centralities from ``(layer, src, dst, alpha)`` chunks (see module doc).

    Each call must hold *all* incoming edges of its targets (self-loops
    included), as :func:`~garage.gat._graph.layerwise_inference` and a
    full-graph forward provide: the uniform share ``1 / n_i`` is counted from
    them.  Every reduction is one PyG ``scatter``; nothing loops over nodes.
    """

    def __init__(self, num_nodes: int, n_layers: int) -> None:
        self.num_nodes = int(num_nodes)
        self.n_layers = int(n_layers)
        self.total = torch.zeros(self.num_nodes, dtype=torch.float64)  # sum of alpha, j -> i != j
        self.lift = torch.zeros(self.num_nodes, dtype=torch.float64)  # sum of alpha * n_i
        self.out_edges = torch.zeros(self.num_nodes, dtype=torch.float64)  # edges j -> i != j
        self.n_seen = 0

    def __call__(self, layer: int, src: Tensor, dst: Tensor, alpha: Tensor) -> None:
        self.add(src, dst, alpha)

    def add(self, src: Tensor, dst: Tensor, alpha: Tensor) -> None:
        n = self.num_nodes
        # n_i: how many cells target i attends over (its in-edges + the self-loop)
        n_in = scatter(torch.ones(dst.numel(), dtype=torch.float64), dst, dim=0, dim_size=n,
                       reduce="sum")
        keep = src != dst  # drop the self-loops GATConv added
        src_k, dst_k = src[keep], dst[keep]
        per_edge = alpha[keep].to(torch.float64).mean(dim=1)  # mean over heads
        self.total += scatter(per_edge, src_k, dim=0, dim_size=n, reduce="sum")
        self.lift += scatter(per_edge * n_in[dst_k], src_k, dim=0, dim_size=n, reduce="sum")
        self.out_edges += scatter(torch.ones_like(per_edge), src_k, dim=0, dim_size=n,
                                  reduce="sum")
        self.n_seen += 1

    def raw(self) -> np.ndarray:
        """``c_raw_j``: summed attention received, averaged over layers (grows with degree)."""
        return (self.total / self.n_layers).numpy()

    def relative(self) -> np.ndarray:
        """``c_rel_j``: attention received relative to the uniform share (1 for isolated cells)."""
        out = torch.where(self.out_edges > 0, self.lift / self.out_edges.clamp(min=1),
                          torch.ones_like(self.lift))
        return out.numpy()

    def result(self, kind: str = "raw") -> np.ndarray:
        """The centrality named *kind* (``"raw"`` or ``"relative"``)."""
        if kind == "raw":
            return self.raw()
        if kind == "relative":
            return self.relative()
        raise ValueError(kind)


def attention_centrality(
    attention: list[tuple[Tensor, Tensor]], num_nodes: int, kind: str = "raw"
) -> np.ndarray:
    """A centrality straight from per-layer ``(edge_index, alpha)`` (full-graph forward)."""
    acc = AttentionCentrality(num_nodes, len(attention))
    for ei, alpha in attention:
        acc.add(ei[0].cpu(), ei[1].cpu(), alpha.detach().cpu())
    return acc.result(kind)


@dataclass(frozen=True)
class CellScores:
    centrality: np.ndarray  # c_j
    centrality_rank: np.ndarray  # r_j
    confidence: np.ndarray  # p_j
    score: np.ndarray  # score_j


def combine_scores(
    centrality: np.ndarray, probs: np.ndarray, labels: np.ndarray, score_weight: float
) -> CellScores:
    """Per-type centrality rank combined with confidence for the cell's own label.

    *labels* are integer codes (columns of *probs*).  Loops over types, not cells.
    """
    centrality = np.asarray(centrality, dtype=np.float64)
    labels = np.asarray(labels)
    # rank within type: groupby rank is vectorised and deterministic (ties averaged)
    ranks = pd.Series(centrality).groupby(labels).rank(method="average").to_numpy()
    sizes = pd.Series(labels).map(pd.Series(labels).value_counts()).to_numpy()
    r = ranks / sizes
    p = np.asarray(probs, dtype=np.float64)[np.arange(len(labels)), labels]
    lam = float(score_weight)
    score = np.power(r, lam) * np.power(np.clip(p, 0.0, 1.0), 1.0 - lam)
    return CellScores(centrality, r, p, score)
