"""The cell graph in CSR-by-target form, neighbour sampling and exact chunked inference.

Everything here is vectorised torch (no Python loop over nodes or edges) and
linear in the number of edges.

Neighbour sampling follows PyG's ``NeighborLoader`` contract: a batch holds
``n_id`` (global ids of the sampled nodes, the ``batch_size`` seed nodes
first), a local ``edge_index`` (source -> target, targets are sampled nodes)
and ``batch_size``; outputs for the seeds are rows ``[:batch_size]`` and map
back to global cells through ``n_id``.  PyG's own ``NeighborLoader`` needs the
compiled ``pyg-lib`` or ``torch-sparse`` extensions, which are not installable
from PyPI for current torch, so :class:`NeighborSampler` implements the same
contract in plain torch (uniform sampling without replacement, per hop).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from .._utils import progress
from ._features import NodeFeatures
from ._module import GATClassifier


@dataclass(frozen=True)
class CSRGraph:
    """Directed graph stored by target: the sources of target ``i`` are
    ``indices[indptr[i]:indptr[i+1]]``.  No self-loops (GATConv adds them)."""

    indptr: Tensor  # int64 [N + 1]
    indices: Tensor  # int64 [E]

    @property
    def num_nodes(self) -> int:
        return int(self.indptr.numel() - 1)

    @property
    def num_edges(self) -> int:
        return int(self.indices.numel())

    @classmethod
    def from_adjacency(cls, adj) -> "CSRGraph":
        """From a (sparse) adjacency ``A[source, target]``; weights are ignored."""
        a = sp.csr_matrix(adj).T.tocsr()  # rows = targets, columns = sources
        a.setdiag(0)
        a.eliminate_zeros()
        a.sort_indices()
        return cls(torch.from_numpy(a.indptr.astype(np.int64)),
                   torch.from_numpy(a.indices.astype(np.int64)))

    def permuted(self, perm: np.ndarray) -> "CSRGraph":
        """The same graph with node ``perm[k]`` renamed ``k``."""
        n = self.num_nodes
        a = sp.csr_matrix(
            (np.ones(self.num_edges, dtype=np.float32), self.indices.numpy(), self.indptr.numpy()),
            shape=(n, n),
        )
        a = a[perm][:, perm].tocsr()
        a.sort_indices()
        return CSRGraph(torch.from_numpy(a.indptr.astype(np.int64)),
                        torch.from_numpy(a.indices.astype(np.int64)))

    def degree(self) -> Tensor:
        return self.indptr[1:] - self.indptr[:-1]

    def edge_index(self) -> Tensor:
        """``[2, E]`` (source, target), sorted by target."""
        dst = torch.repeat_interleave(torch.arange(self.num_nodes), self.degree())
        return torch.stack([self.indices, dst])

    def in_subgraph(self, start: int, stop: int) -> "SubGraph":
        """Targets ``start..stop-1`` with ALL their incoming edges (exact, unsampled)."""
        targets = torch.arange(start, stop)
        lo, hi = int(self.indptr[start]), int(self.indptr[stop])
        src = self.indices[lo:hi]
        dst_local = torch.repeat_interleave(torch.arange(stop - start), self.degree()[start:stop])
        outside = src[(src < start) | (src >= stop)]
        extra = torch.unique(outside)  # sorted, deterministic
        n_id = torch.cat([targets, extra])
        # local id of each source: inside the chunk -> offset, outside -> after the targets
        src_local = torch.where(
            (src >= start) & (src < stop),
            src - start,
            (stop - start) + torch.searchsorted(extra, src),
        )
        return SubGraph(n_id, torch.stack([src_local, dst_local]), stop - start)


@dataclass(frozen=True)
class SubGraph:
    """A batch: ``n_id`` global ids (the ``batch_size`` targets first) and a local edge_index."""

    n_id: Tensor
    edge_index: Tensor
    batch_size: int
    #: per hop (seeds first), for trimming; None for exact (unsampled) subgraphs
    num_sampled_nodes: list[int] | None = None
    num_sampled_edges: list[int] | None = None


class NeighborSampler:
    """Uniform neighbour sampling without replacement, ``num_neighbors[l]`` per hop.

    Same contract as PyG's ``NeighborLoader`` (``n_id`` with the seeds first,
    ``batch_size``, local ``edge_index``); only nodes first reached at hop ``l``
    are expanded at hop ``l + 1``.  Reproducible through *generator*.
    """

    def __init__(self, graph: CSRGraph, num_neighbors: list[int]) -> None:
        self.graph = graph
        self.num_neighbors = list(num_neighbors)
        self._local = torch.full((graph.num_nodes,), -1, dtype=torch.int64)

    def _sample_in_edges(self, targets: Tensor, k: int, gen: torch.Generator):
        g = self.graph
        starts = g.indptr[targets]
        deg = g.indptr[targets + 1] - starts
        total = int(deg.sum())
        if total == 0:
            empty = torch.empty(0, dtype=torch.int64)
            return empty, empty
        seg = torch.repeat_interleave(torch.arange(targets.numel()), deg)
        seg_start = torch.cumsum(deg, 0) - deg
        rank = torch.arange(total) - seg_start[seg]  # position within the target's list
        pos = starts[seg] + rank
        if int(deg.max()) > k:
            # random order within each target's segment: sort by (segment, uniform key)
            key = seg.to(torch.float64) + torch.rand(total, generator=gen, dtype=torch.float64)
            order = torch.argsort(key)  # keeps segments contiguous and in order
            keep = order[rank < k]  # the first k of each shuffled segment
        else:
            keep = torch.arange(total)
        return g.indices[pos[keep]], targets[seg[keep]]

    def sample(self, seeds: Tensor, gen: torch.Generator) -> SubGraph:
        local = self._local
        n_id = [seeds]
        local[seeds] = torch.arange(seeds.numel())
        n = seeds.numel()
        frontier = seeds
        srcs, dsts = [], []
        try:
            for k in self.num_neighbors:
                src, dst = self._sample_in_edges(frontier, k, gen)
                srcs.append(src)
                dsts.append(dst)
                new = torch.unique(src[local[src] < 0])
                local[new] = torch.arange(n, n + new.numel())
                n += new.numel()
                n_id.append(new)
                frontier = new
                if frontier.numel() == 0:
                    break
            n_id_t = torch.cat(n_id)
            src = torch.cat(srcs) if srcs else torch.empty(0, dtype=torch.int64)
            dst = torch.cat(dsts) if dsts else torch.empty(0, dtype=torch.int64)
            edge_index = torch.stack([local[src], local[dst]])
        finally:
            local[torch.cat(n_id)] = -1
        hops = len(self.num_neighbors)
        n_nodes = [int(t.numel()) for t in n_id] + [0] * (hops + 1 - len(n_id))
        n_edges = [int(t.numel()) for t in srcs] + [0] * (hops - len(srcs))
        return SubGraph(n_id_t, edge_index, int(seeds.numel()), n_nodes, n_edges)

    def batches(self, nodes: Tensor, batch_size: int, gen: torch.Generator) -> Iterator[SubGraph]:
        """Shuffle *nodes* with *gen* and yield one sampled subgraph per chunk."""
        perm = nodes[torch.randperm(nodes.numel(), generator=gen)]
        for start in range(0, perm.numel(), batch_size):
            yield self.sample(perm[start:start + batch_size], gen)


#: called once per chunk and layer: (layer, global source ids, global target ids, alpha[E, heads])
AttentionHook = Callable[[int, Tensor, Tensor, Tensor], None]


@torch.no_grad()
def layerwise_inference(
    model: GATClassifier,
    x: Tensor | NodeFeatures,
    graph: CSRGraph,
    *,
    chunk_size: int,
    device: torch.device,
    on_attention: AttentionHook | None = None,
) -> tuple[Tensor, Tensor]:
    """Exact eval-mode forward pass, layer by layer over chunks of target cells.

    Each chunk takes its targets with all their incoming edges, so the result
    equals a full-graph forward while memory stays ``O(N * width + chunk edges)``
    (sparse HVG features are only taken row by row, see :class:`NodeFeatures`).
    With *on_attention*, every layer's ``alpha`` (as returned by GATConv, self
    loops included, restricted to edges into the chunk's targets) is passed on
    with global source/target ids.  Returns ``(logits, embedding)`` on CPU.
    A progress bar (off without a TTY) counts layers x chunks.
    """
    feats = x if isinstance(x, NodeFeatures) else NodeFeatures.from_tensor(x)
    was_training = model.training
    model.eval()
    n = graph.num_nodes
    chunk_size = max(1, min(int(chunk_size), n))
    n_chunks = -(-n // chunk_size)
    bar = progress(total=model.n_layers * n_chunks, desc="gat inference", unit="chunk",
                   leave=False)
    h: Tensor | None = None
    try:
        for i in range(model.n_layers):
            out = torch.empty(n, model.embedding_dim)
            for start in range(0, n, chunk_size):
                stop = min(n, start + chunk_size)
                if chunk_size < n:
                    sub = graph.in_subgraph(start, stop)
                    xs = feats.rows(sub.n_id) if i == 0 else h[sub.n_id]
                else:
                    sub = SubGraph(torch.arange(n), graph.edge_index(), n)
                    xs = feats.all() if i == 0 else h
                hs, att = model.layer(i, xs.to(device), sub.edge_index.to(device),
                                      return_attention=on_attention is not None)
                out[start:stop] = hs[: sub.batch_size].cpu()
                if att is not None:
                    ei, alpha = att
                    ei, alpha = ei.cpu(), alpha.cpu()
                    into_targets = ei[1] < sub.batch_size
                    ei, alpha = ei[:, into_targets], alpha[into_targets]
                    on_attention(i, sub.n_id[ei[0]], sub.n_id[ei[1]], alpha)
                bar.update(1)
            h = out
        logits = torch.cat([
            model.classify(h[s:s + chunk_size].to(device)).cpu() for s in range(0, n, chunk_size)
        ])
    finally:
        bar.close()
        model.train(was_training)
    return logits, h
