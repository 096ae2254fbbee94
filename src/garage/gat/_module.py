"""The GAT classifier: a pure torch / PyG module (no AnnData, no files)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATConv

#: one layer's attention: ``(edge_index_used, alpha[E, heads])`` as GATConv returns it
Attention = tuple[Tensor, Tensor]


@dataclass
class GATOutput:
    """What a forward pass returns.

    ``attention[l]`` is layer ``l``'s ``(edge_index, alpha)`` exactly as
    ``GATConv(..., return_attention_weights=True)`` returned it (self-loops
    included); empty unless asked for.
    """

    logits: Tensor
    embedding: Tensor
    attention: list[Attention] = field(default_factory=list)


def feature_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """``F.dropout`` that also takes a sparse CSR input (HVG features).

    Dropping an entry of a sparse row zeroes it and rescales the rest, exactly
    as on the dense row (zeros stay zero), so only the stored values are drawn.
    """
    if x.layout == torch.sparse_csr:
        if not training or p == 0.0:
            return x
        return torch.sparse_csr_tensor(x.crow_indices(), x.col_indices(),
                                       F.dropout(x.values(), p=p, training=True), size=x.shape)
    return F.dropout(x, p=p, training=training)


class GATClassifier(nn.Module):
    """Multi-head GAT for node classification.

    ``n_layers`` x [dropout -> GATConv(heads concatenated) -> ELU], then
    dropout -> Linear classifier.  The last GAT layer's output is the cell
    embedding (``hidden * heads`` columns).
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        *,
        hidden: int = 32,
        heads: int = 4,
        n_layers: int = 2,
        dropout: float = 0.3,
        attention_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.hparams = {
            "in_dim": int(in_dim), "n_classes": int(n_classes), "hidden": int(hidden),
            "heads": int(heads), "n_layers": int(n_layers), "dropout": float(dropout),
            "attention_dropout": float(attention_dropout),
        }
        self.dropout = dropout
        self.convs = nn.ModuleList(
            GATConv(in_dim if i == 0 else hidden * heads, hidden, heads=heads, concat=True,
                    dropout=attention_dropout, add_self_loops=True)
            for i in range(n_layers)
        )
        self.classifier = nn.Linear(hidden * heads, n_classes)

    @property
    def n_layers(self) -> int:
        return len(self.convs)

    @property
    def embedding_dim(self) -> int:
        return self.hparams["hidden"] * self.hparams["heads"]

    def layer(
        self, i: int, x: Tensor, edge_index: Tensor, *, return_attention: bool = False
    ) -> tuple[Tensor, Attention | None]:
        """Apply GAT layer *i*; with *return_attention*, also its ``(edge_index, alpha)``.

        *x* may be a sparse CSR tensor (HVG features into layer 0).
        """
        x = feature_dropout(x, self.dropout, self.training)
        if return_attention:
            h, (ei, alpha) = self.convs[i](x, edge_index, return_attention_weights=True)
            return F.elu(h), (ei, alpha)
        return F.elu(self.convs[i](x, edge_index)), None

    def classify(self, h: Tensor) -> Tensor:
        return self.classifier(F.dropout(h, p=self.dropout, training=self.training))

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        *,
        return_attention: bool = False,
        num_sampled_nodes: list[int] | None = None,
        num_sampled_edges: list[int] | None = None,
    ) -> GATOutput:
        """Full forward pass.

        With ``num_sampled_nodes`` / ``num_sampled_edges`` (per hop, as a
        neighbour sampler returns them, nodes and edges ordered by hop), layer
        ``i`` drops the last ``i`` hops, which no longer influence the seeds
        (PyG's ``trim_to_layer``); logits are then valid for the seeds only.
        """
        attention: list[Attention] = []
        h = x
        for i in range(self.n_layers):
            ei = edge_index
            if num_sampled_nodes is not None and num_sampled_edges is not None and i > 0:
                h = h[: sum(num_sampled_nodes[: len(num_sampled_nodes) - i])]
                ei = edge_index[:, : sum(num_sampled_edges[: len(num_sampled_edges) - i])]
            h, att = self.layer(i, h, ei, return_attention=return_attention)
            if att is not None:
                attention.append(att)
        return GATOutput(self.classify(h), h, attention)


def class_weights(counts: Tensor, scheme: str) -> Tensor | None:
    """Cross-entropy weights per class from train counts.

    ``balanced``: ``n / (K * n_c)``; ``sqrt``: ``1 / sqrt(n_c)`` rescaled so the
    sample-weighted mean is 1; ``none``: None.  Classes without train cells get 0.
    """
    if scheme == "none":
        return None
    counts = counts.to(torch.float64)
    present = counts > 0
    w = torch.zeros_like(counts)
    if scheme == "balanced":
        w[present] = counts.sum() / (present.sum() * counts[present])
    elif scheme == "sqrt":
        w[present] = counts[present].rsqrt()
        w = w * counts.sum() / (w * counts).sum()
    else:  # pragma: no cover - validated by GATConfig
        raise ValueError(scheme)
    return w.to(torch.float32)
