"""Training loop (full-batch or neighbour-sampled), checkpoints and the memory guard."""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .._utils import atomic_path, budget_left_bytes
from ..errors import GarageError, ResourceError
from ._config import GATConfig
from ._features import NodeFeatures
from ._graph import CSRGraph, NeighborSampler
from ._module import GATClassifier, class_weights

logger = logging.getLogger(__name__)

LOG_COLUMNS = ("epoch", "loss", "train_balanced_accuracy", "holdout_balanced_accuracy")
CHECKPOINT_FORMAT = "garage-gat-ckpt-1"
#: holdout cells scored by the per-epoch (logged) accuracy in minibatch mode: a fixed subsample above
#: this, so the check costs the same at 1,000,000 cells as at 100,000 (the exact figures come from
#: the final scoring pass)
MAX_EPOCH_HOLDOUT = 20_000


@dataclass
class TrainData:
    """Everything the loop needs, in one node order (CPU tensors)."""

    x: NodeFeatures  # normalised [N, F], dense (PCA) or sparse (HVG)
    y: Tensor  # int64 [N] class codes
    train_idx: Tensor  # int64
    holdout_idx: Tensor  # int64
    graph: CSRGraph
    n_classes: int


@dataclass
class TrainResult:
    model: GATClassifier
    log: list[dict[str, float]] = field(default_factory=list)
    epochs: int = 0
    minibatch: bool = False
    resumed_from: int = 0
    seconds: float = 0.0


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Mean recall over the classes present in *y_true* (NaN when empty)."""
    y_true = np.asarray(y_true)
    if y_true.size == 0:
        return float("nan")
    support = np.bincount(y_true, minlength=n_classes)
    hits = np.bincount(y_true[np.asarray(y_pred) == y_true], minlength=n_classes)
    present = support > 0
    return float(np.mean(hits[present] / support[present]))


# --------------------------------------------------------------------- memory
def available_memory_bytes(device: torch.device) -> int:
    """Free memory on *device*: CUDA free memory, else the host's (preprocess's MemAvailable capped
    by a cgroup limit: one definition for every stage)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    from ..preprocess import available_memory_bytes as host_available

    return int(host_available())


def estimate_memory_bytes(
    n_nodes: int, n_edges: int, in_dim: int, config: GATConfig, *, minibatch: bool,
    bytes_per_row: float | None = None,
) -> int:
    """Rough peak of training + inference (float32), from the graph size.

    Per GAT layer, GATConv keeps ``nodes x heads x hidden`` activations (a few
    copies) and ``edges x heads x (hidden + a few)`` for the gathered messages
    and attention; training keeps every layer for backward and doubles that for
    gradients.  Minibatch mode applies this to one sampled batch plus one
    inference chunk, on top of the node features and embeddings of all cells.
    *bytes_per_row* is one feature row's memory (default dense float32,
    ``4 * in_dim``; sparse HVG rows are smaller, see ``NodeFeatures.bytes_per_row``).
    """
    L, H, C = config.n_layers, config.heads, config.hidden
    width = H * C
    row = 4.0 * in_dim if bytes_per_row is None else float(bytes_per_row)
    base = int(n_nodes * row) + n_edges * 8 * 3 + n_nodes * width * 4 * 2

    def layer_bytes(nodes: int, edges: int) -> int:
        edges = edges + nodes  # self-loops
        return 4 * (nodes * width * 4 + edges * H * (C + 4))

    def train_bytes(nodes: int, edges: int) -> int:
        return 2 * L * layer_bytes(nodes, edges) + int(nodes * row * 2)

    if not minibatch:
        return base + train_bytes(n_nodes, n_edges) + layer_bytes(n_nodes, n_edges)
    k, b = config.num_neighbors, config.batch_size
    fan = sum(k**i for i in range(1, L + 1))
    nodes_b = min(n_nodes, b * (1 + fan))
    edges_b = min(n_edges, b * fan)
    avg_deg = n_edges / max(1, n_nodes)
    chunk = min(n_nodes, config.inference_batch_size)
    nodes_c = int(min(n_nodes, chunk * (1 + avg_deg)))
    edges_c = int(min(n_edges, chunk * avg_deg))
    return base + train_bytes(nodes_b, edges_b) + layer_bytes(nodes_c, edges_c)


def check_memory(n_nodes: int, n_edges: int, in_dim: int, config: GATConfig, *,
                 minibatch: bool, device: torch.device, bytes_per_row: float | None = None) -> int:
    """Raise a :class:`ResourceError` (exit 3) when the estimate exceeds the budget; return the estimate."""
    need = estimate_memory_bytes(n_nodes, n_edges, in_dim, config, minibatch=minibatch,
                                 bytes_per_row=bytes_per_row)
    # --max-memory-gb budgets this process's host memory (a scheduler's or container's limit,
    # e.g. Nextflow's task.memory), less what it already holds (interpreter, torch, the loaded
    # cells and graph: the estimate counts only what training adds); on cuda the estimate is of
    # the GPU's memory, so the device's free memory rules
    if config.max_memory_gb is not None and device.type != "cuda":
        have, held = budget_left_bytes(config.max_memory_gb)
        what = f"--max-memory-gb budget less the {held / 1024**3:.2f} GB already held"
    else:
        if config.max_memory_gb is not None:
            logger.info("--max-memory-gb budgets host memory; on %s the GPU's free memory is the "
                        "budget of the GAT's estimate", device)
        have, what = int(0.9 * available_memory_bytes(device)), f"available {device.type} memory"
    gb = 1024**3
    logger.info("memory estimate %.2f GB (%s: %.2f GB)", need / gb, what, have / gb)
    if need > have:
        if minibatch:
            fix = (f"lower --batch-size (now {config.batch_size}), --num-neighbors "
                   f"(now {config.num_neighbors}) or --inference-batch-size "
                   f"(now {config.inference_batch_size}), or run on a larger node")
        else:
            fix = (f"use neighbour-sampled minibatches: set --minibatch-threshold below "
                   f"{n_nodes} (e.g. 0) and, if needed, a smaller --batch-size, or run on a "
                   "larger node")
        raise ResourceError(
            f"the GAT needs about {need / gb:.1f} GB for {n_nodes} cells and {n_edges} edges "
            f"({'minibatch' if minibatch else 'full-batch'}), more than the {what} "
            f"({have / gb:.1f} GB)",
            fix,
        )
    return need


# ---------------------------------------------------------------- checkpoints
def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path, config: GATConfig, fingerprint: dict[str, Any]) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise GarageError(
            f"checkpoint {path} cannot be read ({type(exc).__name__})",
            "delete it and rerun without --resume",
        ) from None
    if state.get("format") != CHECKPOINT_FORMAT:
        raise GarageError(f"{path} is not a GARAGE GAT checkpoint", "delete it and rerun")
    saved = dict(state["config"])
    now = config.to_dict()
    for d in (saved, now):
        d.pop("checkpoint_every", None)
        d.pop("max_memory_gb", None)
    if saved != now or state["fingerprint"] != fingerprint:
        diff = sorted(k for k in now if saved.get(k) != now.get(k))
        what = f"options {diff}" if diff else "input data"
        raise GarageError(
            f"checkpoint {path.name} was written with different {what}",
            "rerun with the same input and options, or delete the checkpoint",
        )
    return state


# ------------------------------------------------------------------- training
@torch.no_grad()
def _sampled_accuracy(model: GATClassifier, data: TrainData, sampler: NeighborSampler,
                      config: GATConfig, device: torch.device, gen: torch.Generator) -> float:
    """Holdout balanced accuracy in eval mode over neighbour-sampled batches."""
    if data.holdout_idx.numel() == 0:
        return float("nan")
    model.eval()
    preds, idx = [], []
    hold = data.holdout_idx
    if hold.numel() > MAX_EPOCH_HOLDOUT:  # a logged figure: a fixed subsample keeps its cost bounded
        pick = torch.randperm(hold.numel(), generator=torch.Generator().manual_seed(int(config.seed) + 1))
        hold = hold[pick[:MAX_EPOCH_HOLDOUT].sort().values]
    for start in range(0, hold.numel(), config.batch_size):
        b = sampler.sample(hold[start:start + config.batch_size], gen)
        out = model(data.x.rows(b.n_id).to(device), b.edge_index.to(device),
                    num_sampled_nodes=b.num_sampled_nodes, num_sampled_edges=b.num_sampled_edges)
        preds.append(out.logits[: b.batch_size].argmax(1).cpu())
        idx.append(b.n_id[: b.batch_size])
    model.train()
    y = data.y[torch.cat(idx)].numpy()
    return balanced_accuracy(y, torch.cat(preds).numpy(), data.n_classes)


def train_gat(
    data: TrainData,
    config: GATConfig,
    *,
    device: torch.device,
    minibatch: bool,
    checkpoint: Path | None = None,
    resume: bool = False,
    fingerprint: dict[str, Any] | None = None,
) -> TrainResult:
    """Train the classifier; log per-epoch loss and balanced accuracies.

    The caller seeds torch (``set_seed``) before calling, so initialisation,
    dropout and sampling all derive from ``config.seed``.  With *checkpoint*,
    model, optimizer, RNG states and log rows are saved every
    ``config.checkpoint_every`` epochs; *resume* continues from that file and
    reproduces the uninterrupted run (same RNG stream).
    """
    fingerprint = fingerprint or {}
    epochs = config.resolved_epochs(minibatch, data.train_idx.numel())
    model = GATClassifier(
        data.x.shape[1], data.n_classes, hidden=config.hidden, heads=config.heads,
        n_layers=config.n_layers, dropout=config.dropout,
        attention_dropout=config.attention_dropout,
    ).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    counts = torch.bincount(data.y[data.train_idx], minlength=data.n_classes)
    weight = class_weights(counts, config.class_weight)
    weight = None if weight is None else weight.to(device)
    gen = torch.Generator().manual_seed(int(config.seed))

    log: list[dict[str, float]] = []
    start = 1
    if resume and checkpoint is not None and checkpoint.exists():
        state = _load_checkpoint(checkpoint, config, fingerprint)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        gen.set_state(state["sampler_rng"])
        log = [dict(r) for r in state["log"]]
        start = int(state["epoch"]) + 1
        logger.info("resuming from %s at epoch %d of %d", checkpoint, start, epochs)
    elif resume:
        logger.warning("--resume: no checkpoint at %s; starting from epoch 1", checkpoint)
    resumed_from = start - 1

    y_np = data.y.numpy()
    tr_np, ho_np = data.train_idx.numpy(), data.holdout_idx.numpy()
    if not minibatch:
        x_d, y_d = data.x.all().to(device), data.y.to(device)
        ei_d = data.graph.edge_index().to(device)
        tr_d = data.train_idx.to(device)
    else:
        sampler = NeighborSampler(data.graph, [config.num_neighbors] * config.n_layers)

    t0 = time.perf_counter()
    from .._utils import progress

    # one tick per gradient step, so the ETA is right in minibatch mode too
    steps = 1 if not minibatch else config.steps_per_pass(data.train_idx.numel())
    limit = config.resolved_step_limit(minibatch, data.train_idx.numel())
    if limit is not None:
        logger.info("one pass is %d steps: training stops after %d (auto schedule)", steps, limit)
        steps = limit
    # minibatch epochs are passes over >= 50,000 cells (and 1-5 of them): save after each one
    every = 1 if minibatch else config.checkpoint_every
    bar = progress(total=epochs * steps, initial=(start - 1) * steps, desc="gat training",
                   unit="batch" if minibatch else "epoch")
    for epoch in range(start, epochs + 1):
        model.train()
        if not minibatch:
            opt.zero_grad(set_to_none=True)
            out = model(x_d, ei_d)
            loss = F.cross_entropy(out.logits[tr_d], y_d[tr_d], weight=weight)
            loss.backward()
            opt.step()
            bar.update(1)
            epoch_loss = float(loss.detach())
            model.eval()
            with torch.no_grad():
                logits = model(x_d, ei_d).logits.cpu()
            pred = logits.argmax(1).numpy()
            train_acc = balanced_accuracy(y_np[tr_np], pred[tr_np], data.n_classes)
            holdout_acc = balanced_accuracy(y_np[ho_np], pred[ho_np], data.n_classes)
        else:
            total, seen = 0.0, 0
            seen_idx, seen_pred = [], []
            # a pass longer than the auto budget stops at it: no batch is sampled beyond it
            for batch in itertools.islice(sampler.batches(data.train_idx, config.batch_size, gen), limit):
                opt.zero_grad(set_to_none=True)
                out = model(data.x.rows(batch.n_id).to(device), batch.edge_index.to(device),
                            num_sampled_nodes=batch.num_sampled_nodes,
                            num_sampled_edges=batch.num_sampled_edges)
                target = data.y[batch.n_id[: batch.batch_size]].to(device)
                logits_b = out.logits[: batch.batch_size]
                loss = F.cross_entropy(logits_b, target, weight=weight)
                loss.backward()
                opt.step()
                bar.update(1)
                total += float(loss.detach()) * batch.batch_size
                seen += batch.batch_size
                seen_idx.append(batch.n_id[: batch.batch_size])
                seen_pred.append(logits_b.detach().argmax(1).cpu())
            epoch_loss = total / max(1, seen)
            # train: the minibatch predictions of this epoch (train mode, as they were made);
            # holdout: eval mode on sampled neighbourhoods, with its own RNG stream so that
            # the training stream (and --resume) is unaffected.  The exact figures over the
            # full graph come from the final scoring pass (uns['garage']['gat']).
            idx = torch.cat(seen_idx).numpy()
            train_acc = balanced_accuracy(y_np[idx], torch.cat(seen_pred).numpy(), data.n_classes)
            holdout_acc = _sampled_accuracy(model, data, sampler, config, device,
                                            torch.Generator().manual_seed(
                                                int(config.seed) * 100_003 + epoch))
        row = {
            "epoch": epoch,
            "loss": epoch_loss,
            "train_balanced_accuracy": train_acc,
            "holdout_balanced_accuracy": holdout_acc,
        }
        log.append(row)
        bar.set_postfix(epoch=epoch, loss=f"{epoch_loss:.3f}",
                        holdout=f"{row['holdout_balanced_accuracy']:.3f}", refresh=False)
        if epoch == start or epoch % 25 == 0 or epoch == epochs:
            logger.info("epoch %d/%d loss %.4f train bal.acc %.3f holdout bal.acc %.3f",
                        epoch, epochs, epoch_loss, row["train_balanced_accuracy"],
                        row["holdout_balanced_accuracy"])
        if (checkpoint is not None and config.checkpoint_every > 0
                and epoch % every == 0 and epoch < epochs):
            _save_checkpoint(checkpoint, {
                "format": CHECKPOINT_FORMAT,
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "sampler_rng": gen.get_state(),
                "log": log,
                "config": config.to_dict(),
                "fingerprint": fingerprint,
            })
    bar.close()
    model.eval()
    return TrainResult(model, log, epochs, minibatch, resumed_from,
                       time.perf_counter() - t0)
