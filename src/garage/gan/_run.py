"""Stage entry points: ``run_gan`` (train + generate) and ``run_generate`` (saved model)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

import torch

from .. import constants as C
from .._utils import check_writable_dir, clear_stale, resolve_device, set_seed, set_threads
from ..errors import GarageError
from ._config import GANConfig
from ._model import GarageGAN, group_composition
from ._train import write_log

logger = logging.getLogger(__name__)

SUFFIX_CKPT = C.SUFFIX_GAN_CKPT
SUFFIX_GENERATED = C.SUFFIX_GENERATED

#: fast settings for ``garage run --profile test`` (about 1,000 bundled cells): fewer steps
#: than the defaults, no early stopping (the short run would stop on noise)
TEST_OVERRIDES: dict = {
    "gan_steps": 600,
    "ae_steps": 400,
    "decoder_steps": 150,
    "patience": 0,
    "checkpoint_every": 0,
}

PROVENANCE_HEADER = (
    "# PRIVATE: GARAGE seed provenance. It names the real training cells (seeds) that synthetic cells\n"
    "# were generated from, so it identifies training cells. Keep it with the real data; share only\n"
    "# PREFIX.synthetic.h5ad and the MultiQC report. seed_cell is empty for cells made from noise only.\n"
)


def write_provenance(prov, path: Path, **about) -> Path:
    """Write the PRIVATE provenance table with its header (atomically)."""
    from .._utils import write_text_atomic

    head = PROVENANCE_HEADER + "".join(f"# {k}={v}\n" for k, v in about.items())
    return write_text_atomic(head + prov.to_csv(sep="\t", index=False), Path(path))


def _read_input(path: Path):
    import anndata as ad

    path = Path(path)
    if not path.is_file():
        raise GarageError(f"input {path} does not exist", "pass the PREFIX.seeds.h5ad written by `garage gat`")
    try:
        return ad.read_h5ad(path)
    except Exception as exc:
        raise GarageError(f"cannot read {path.name} as .h5ad ({type(exc).__name__})",
                          "pass the PREFIX.seeds.h5ad written by `garage gat`") from None


def run_gan(input, outdir, prefix: str, config: GANConfig, *, device: str = "cpu",
            threads: int | None = None, resume: bool = False, provenance: bool = True,
            shareable_model: bool = False) -> dict[str, Path]:
    """Train the GAN on the train cells of *input* and write the stage outputs.

    Returns ``{"h5ad": PREFIX.synthetic.h5ad, "model": PREFIX.generator.pt,
    "log": PREFIX.gan_log.tsv}`` plus ``"provenance": PREFIX.provenance.tsv``
    (PRIVATE; with *provenance*).  *shareable_model* writes a model without seed
    codes, seed names or training-cell digests (it generates unseeded cells
    only).  With *resume*, training continues from ``OUTDIR/PREFIX.gan.ckpt.pt``
    (written every ``checkpoint_every`` steps and deleted after success) and
    reaches the same final step.
    """
    config = config.for_output(shareable_model)  # critic_path auto: on for a shareable model
    config.validate()
    dev = resolve_device(device)
    outdir = check_writable_dir(Path(outdir))
    out_h5 = outdir / f"{prefix}{C.SUFFIX_SYNTHETIC}"
    out_model = outdir / f"{prefix}{C.SUFFIX_GENERATOR}"
    out_log = outdir / f"{prefix}{C.SUFFIX_GAN_LOG}"
    out_prov = outdir / f"{prefix}{C.SUFFIX_PROVENANCE}"
    ckpt = outdir / f"{prefix}{SUFFIX_CKPT}"
    if Path(input).resolve() in {p.resolve() for p in (out_h5, out_model, out_log, out_prov)}:
        raise GarageError("an output would overwrite the input", "choose another --outdir or --prefix")
    clear_stale([out_h5, out_model, out_log, out_prov, ckpt])  # (the checkpoint itself stays: --resume)
    set_threads(threads)
    set_seed(config.seed)
    adata = _read_input(input)
    model = GarageGAN.setup(adata, config)
    del adata
    if not model.meta["sample"]:
        model.meta["sample"] = prefix
    # fail on a bad composition (unknown type or condition, too few cells) before training, not after
    meta = model.meta
    group_composition(meta["categories"], meta["conditions"], meta["group_counts"], config.n_cells,
                      config.composition, config.cells_per_type, config.cells_per_group, meta["rare_types"],
                      config.allow_counterfactual)
    if shareable_model and config.mode == "original":
        raise GarageError("--mode original generates from real seed profiles, so its model cannot be shareable",
                          "drop --shareable-model, or use --mode garage")
    model.check_memory(dev)
    if ckpt.exists() and not resume:
        logger.warning("ignoring an old checkpoint %s (pass --resume to continue it)", ckpt.name)
    t0 = time.perf_counter()
    rows = model.train(dev, ckpt if config.checkpoint_every else None, resume=resume)
    t_train = time.perf_counter() - t0
    if shareable_model:  # generate as the shareable model will: unseeded, small groups' sizes pooled
        from ._model import shareable_library

        model.meta["seed_codes"] = torch.zeros(0)
        model.meta.update(shareable_library(model.meta))
    about = {
        "input": Path(input).name,
        "device": dev.type,
        "train_seconds": round(t_train, 2),
        "n_train_cells": int(model.data.n),
        "n_val_cells": int(len(model.data.val_rows)),
        "n_seeds": int(model.data.seed_rows.unique().numel()),
        "schedule": {k: int(v) for k, v in model.meta["schedule"].items()},
        "steps_run": model.meta["steps_run"],
    }
    # the cells go to a staging file chunk by chunk as they are drawn; it takes its final name
    # only after the model, log and provenance are written, so an existing PREFIX.synthetic.h5ad
    # still means the stage finished (garage run --resume reuses a stage whose outputs exist)
    staged = out_h5.with_name(f".{out_h5.name.removesuffix('.h5ad')}.staged.h5ad")
    try:
        syn, prov = model.generate(config.n_cells, config.composition, config.cells_per_type, seed=config.seed,
                                   device=dev, cells_per_group=config.cells_per_group,
                                   allow_counterfactual=config.allow_counterfactual, with_provenance=True,
                                   out=staged, extra_uns=about)
        outs = {"h5ad": out_h5, "model": out_model, "log": out_log}
        model.save(out_model, shareable=shareable_model)
        write_log(rows, out_log)
        if provenance:
            outs["provenance"] = write_provenance(prov, out_prov, sample=model.meta["sample"],
                                                  seed=config.seed, model=out_model.name)
        os.replace(staged, out_h5)
    finally:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
    with contextlib.suppress(FileNotFoundError):
        ckpt.unlink()
    logger.info("wrote %s (%d cells, %d types) after %.1f s of training",
                out_h5.name, syn.n_obs, syn.obs[C.OBS_CELL_TYPE].nunique(), t_train)
    return outs


def run_generate(model, outdir, prefix: str, *, n_cells: int | None = None, composition: str = "original",
                 cells_per_type=None, seed: int = 0, device: str = "cpu", cells_per_group=None,
                 allow_counterfactual: bool = False, provenance: bool = False) -> dict[str, Path]:
    """More synthetic cells from a saved ``PREFIX.generator.pt``, without retraining.

    With the training run's seed, composition and cell number, the cells equal
    those of ``PREFIX.synthetic.h5ad``.  Returns ``{"h5ad": PREFIX.generated.h5ad}``
    (plus ``"provenance"``, PRIVATE, with *provenance*).
    """
    dev = resolve_device(device)
    outdir = check_writable_dir(Path(outdir))
    out = outdir / f"{prefix}{SUFFIX_GENERATED}"
    if Path(model).resolve() == out.resolve():
        raise GarageError("output would overwrite the model", "choose another --outdir or --prefix")
    set_seed(seed)
    gan = GarageGAN.load(model, device=dev)
    if not gan.meta.get("sample"):
        gan.meta["sample"] = prefix
    syn, prov = gan.generate(n_cells, composition, cells_per_type, seed=seed, device=dev,
                             cells_per_group=cells_per_group, allow_counterfactual=allow_counterfactual,
                             with_provenance=True, out=out,
                             extra_uns={"model_file": Path(model).name, "device": dev.type})
    outs = {"h5ad": out}
    if provenance:
        outs["provenance"] = write_provenance(prov, outdir / f"{prefix}.generated{C.SUFFIX_PROVENANCE}",
                                              sample=gan.meta.get("sample", ""), seed=seed, model=Path(model).name)
    logger.info("wrote %s (%d cells)", out.name, syn.n_obs)
    return outs
