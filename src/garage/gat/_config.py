"""GAT stage options: one frozen dataclass, saved next to the model."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

from ..errors import GarageError

Features = Literal["pca", "hvg"]
ClassWeight = Literal["balanced", "sqrt", "none"]
#: how seeds are picked inside each type (the per-type quotas are the same for all)
SeedStrategy = Literal["score", "random", "coverage"]
#: attention centrality: attention received relative to a uniform share, or its raw sum
Centrality = Literal["raw", "relative"]
#: coordinates the coverage strategy partitions each type in
CoverageSpace = Literal["pca", "gat"]

#: obs column of the seeds file: the coverage region of every train cell, numbered inside
#: its type by the score of the region's seed (0 = best); -1 for holdout cells, types
#: without seeds and strategies without regions (score, random)
OBS_SEED_REGION = "garage_seed_region"

#: epochs used when ``GATConfig.epochs`` is None (auto): full-batch passes are
#: one gradient step each, minibatch passes are ``n_train / batch_size`` steps.
AUTO_EPOCHS_FULL = 100
AUTO_EPOCHS_MINIBATCH = 5
#: auto minibatch training: as many passes (at most 5) as fit in this many gradient steps; when
#: one pass is longer, a single pass stopped after this many steps (a random 512,000 train cells
#: at the default batch size).  5 passes up to about 100,000 train cells (unchanged there), fewer
#: above, one part-pass from about 512,000: a 1M-cell GAT with 5 passes ran past 60 minutes on 2
#: cores, a neighbour-sampled step costing more where neighbourhoods no longer overlap
#: (bench/results/scale.md)
AUTO_MAX_STEPS_MINIBATCH = 500


@dataclass(frozen=True)
class GATConfig:
    """Options of stage 1 (GAT training, attention scores, seed selection).

    Parameters
    ----------
    features
        Node features: ``"pca"`` (``obsm['X_pca']``) or ``"hvg"`` (log-normalised
        ``X`` over the highly variable genes).
    n_layers, hidden, heads
        GATConv layers, hidden units per head, attention heads (heads are
        concatenated, so the embedding ``obsm['X_gat']`` has ``hidden * heads``
        columns).
    dropout
        Feature dropout before every layer and before the classifier.
    attention_dropout
        Dropout on the attention coefficients while training (GATConv ``dropout``).
    epochs
        Passes over the train cells; ``None`` (auto) = 100 full-batch; minibatch: 5,
        or fewer where 5 passes would exceed ``AUTO_MAX_STEPS_MINIBATCH`` (500)
        gradient steps (a pass is ``n_train / batch_size`` steps), and one pass
        stopped after 500 steps where a single pass is longer.
    lr, weight_decay
        Adam learning rate and L2 penalty.
    class_weight
        Loss weights per type: ``"balanced"`` (``n / (K * n_c)``, the explicit rare
        priority), ``"sqrt"`` (``1 / sqrt(n_c)``, normalised) or ``"none"``.
    seed_fraction
        Seeds as a fraction of the train cells, in (0, 1].
    rare_threshold
        **Deprecated fallback, normally unused.**  Which types are rare is decided
        once, by ``garage preprocess``, and read from ``uns['garage']['rare_types']``
        (:func:`garage._meta.rare_types_of`).  This threshold (``None``:
        ``constants.RARE_THRESHOLD``) only decides rarity for an input written
        before preprocess recorded that list; with the list present it is ignored
        (with a warning when it differs from the threshold preprocess used).
    rare_min_seeds
        Guaranteed seeds per rare type (all of its train cells when it has fewer).
    seed_strategy
        How each type's quota is filled (the quotas are the same for every strategy):
        ``"score"`` takes the highest-scoring train cells; ``"random"`` takes train
        cells uniformly at random (seeded by ``seed``; the ablation of issue 13.4);
        ``"coverage"`` partitions the type's train cells into ``quota`` regions
        (bisecting 2-means in ``coverage_space``, linear in cells, see
        :mod:`garage.gat._seeds`) and takes, in each region, the highest-scoring
        cell of the half closest to the region's centroid, so that sub-states
        inside one label all get seeds.  The region of every train cell is
        written to ``obs['garage_seed_region']``.
    centrality
        Attention centrality in the score: ``"raw"`` (the summed attention a cell
        receives; it grows with degree, Spearman 0.76-0.92 on real data) or
        ``"relative"`` (each coefficient divided by the uniform share
        ``1/(deg_i + 1)`` the neighbour would give every cell, averaged over the
        cell's neighbours; about independent of degree).  See
        :mod:`garage.gat._score`.  The default stays ``raw`` until the
        multi-dataset fidelity benchmark decides.
    coverage_space
        Coordinates of the coverage strategy: ``"pca"`` (``obsm['X_pca']``, the
        expression space the GAN and the evaluation work in) or ``"gat"`` (the GAT
        embedding ``obsm['X_gat']``, trained to separate types).
    score_weight
        ``lambda`` in ``score = centrality_rank ** lambda * confidence ** (1 - lambda)``.
    minibatch_threshold
        Graphs with more cells train with neighbour-sampled minibatches and run
        inference in chunks (memory linear in cells); 0 forces minibatches.
    batch_size
        Seed (target) cells per minibatch.
    num_neighbors
        Neighbours sampled per cell and layer in minibatch mode.
    inference_batch_size
        Target cells per chunk of the exact layer-wise inference (minibatch mode).
    checkpoint_every
        Write ``PREFIX.gat.ckpt.pt`` every N epochs (0: never); in minibatch mode,
        where an epoch is a pass over at least 50,000 cells, after every epoch.
    max_memory_gb
        Host memory budget for the pre-flight estimate on the CPU; ``None``: available
        memory.  On cuda the GPU's free memory is the budget.
    seed
        Feeds every random source (init, dropout, sampling).
    """

    features: Features = "pca"
    n_layers: int = 2
    hidden: int = 32
    heads: int = 4
    dropout: float = 0.3
    attention_dropout: float = 0.1
    epochs: int | None = None
    lr: float = 5e-3
    weight_decay: float = 5e-4
    class_weight: ClassWeight = "balanced"
    seed_fraction: float = 0.1
    rare_threshold: float | None = None
    rare_min_seeds: int = 10
    seed_strategy: SeedStrategy = "score"
    centrality: Centrality = "raw"
    coverage_space: CoverageSpace = "pca"
    score_weight: float = 0.5
    minibatch_threshold: int = 50_000
    batch_size: int = 1024
    num_neighbors: int = 10
    inference_batch_size: int = 8192
    checkpoint_every: int = 10
    max_memory_gb: float | None = None
    seed: int = 0

    def validate(self) -> None:
        def bad(opt: str, got: Any, want: str) -> GarageError:
            return GarageError(f"--{opt} must be {want}, got {got!r}", f"pass --{opt} {want}")

        for name, kind in (("features", Features), ("class_weight", ClassWeight),
                           ("seed_strategy", SeedStrategy), ("centrality", Centrality),
                           ("coverage_space", CoverageSpace)):
            allowed = get_args(kind)
            if getattr(self, name) not in allowed:
                raise bad(name.replace("_", "-"), getattr(self, name),
                          "one of " + ", ".join(allowed))
        for name in ("n_layers", "hidden", "heads", "batch_size", "num_neighbors",
                     "inference_batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise bad(name.replace("_", "-"), v, "an integer >= 1")
        for name in ("rare_min_seeds", "minibatch_threshold", "checkpoint_every", "seed"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise bad(name.replace("_", "-"), v, "an integer >= 0")
        if self.epochs is not None and (
            not isinstance(self.epochs, int) or isinstance(self.epochs, bool) or self.epochs < 1
        ):
            raise bad("epochs", self.epochs, "an integer >= 1 (or omitted for auto)")
        if not 0.0 <= self.dropout < 1.0:
            raise bad("dropout", self.dropout, "in [0, 1)")
        if not 0.0 <= self.attention_dropout < 1.0:
            raise bad("attention-dropout", self.attention_dropout, "in [0, 1)")
        if not self.lr > 0:
            raise bad("lr", self.lr, "> 0")
        if not self.weight_decay >= 0:
            raise bad("weight-decay", self.weight_decay, ">= 0")
        if not 0.0 < self.seed_fraction <= 1.0:
            raise bad("seed-fraction", self.seed_fraction, "in (0, 1]")
        if self.rare_threshold is not None and not 0.0 <= self.rare_threshold < 1.0:
            raise bad("rare-threshold", self.rare_threshold, "in [0, 1) (or omitted)")
        if not 0.0 <= self.score_weight <= 1.0:
            raise bad("score-weight", self.score_weight, "in [0, 1]")
        if self.max_memory_gb is not None and not self.max_memory_gb > 0:
            raise bad("max-memory-gb", self.max_memory_gb, "> 0 (or omitted)")

    def resolved_epochs(self, minibatch: bool, n_train: int | None = None) -> int:
        """Epochs to run: ``epochs`` when given; auto: 100 full-batch, or the passes over *n_train*
        train cells (at most 5, at least 1) that fit in ``AUTO_MAX_STEPS_MINIBATCH`` gradient steps
        (see :meth:`resolved_step_limit` for a pass longer than that)."""
        if self.epochs is not None:
            return int(self.epochs)
        if not minibatch:
            return AUTO_EPOCHS_FULL
        if not n_train:
            return AUTO_EPOCHS_MINIBATCH
        return int(min(AUTO_EPOCHS_MINIBATCH, max(1, AUTO_MAX_STEPS_MINIBATCH // self.steps_per_pass(n_train))))

    def resolved_step_limit(self, minibatch: bool, n_train: int | None = None) -> int | None:
        """Gradient steps per epoch: None (a whole pass) unless auto minibatch training would need
        more than ``AUTO_MAX_STEPS_MINIBATCH`` steps for one pass; then that many."""
        if self.epochs is not None or not minibatch or not n_train:
            return None
        return AUTO_MAX_STEPS_MINIBATCH if self.steps_per_pass(n_train) > AUTO_MAX_STEPS_MINIBATCH else None

    def steps_per_pass(self, n_train: int) -> int:
        """Minibatch gradient steps of one pass over *n_train* train cells."""
        return -(-int(n_train) // self.batch_size)

    def to_dict(self) -> dict[str, Any]:
        """The options that shape the result (``max_memory_gb`` describes the machine: a Nextflow
        task passes its ``task.memory``, so keeping it would make outputs differ by attempt)."""
        d = asdict(self)
        d.pop("max_memory_gb", None)
        return d

    def to_uns(self) -> dict[str, Any]:
        """Parameters for ``uns`` (h5ad cannot store None: it becomes ``""``)."""
        return {k: ("" if v is None else v) for k, v in self.to_dict().items()}


#: fast settings for ``garage run --profile test`` (1,083-cell bundled data)
TEST_OVERRIDES: dict[str, Any] = {"epochs": 40, "hidden": 16, "heads": 2, "checkpoint_every": 0}
