"""Stage entry points: ``run_gan`` (train + generate) and ``run_generate`` (saved model)."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from .. import constants as C
from .._utils import check_writable_dir, resolve_device, set_seed, set_threads, write_h5ad_atomic
from ..errors import GarageError
from ._config import GANConfig
from ._model import GarageGAN, composition_counts, _h5_safe
from ._train import write_log

logger = logging.getLogger(__name__)

SUFFIX_CKPT = C.SUFFIX_GAN_CKPT
SUFFIX_GENERATED = C.SUFFIX_GENERATED

#: fast settings for ``garage run --profile test`` (1,083 bundled cells): half the
#: adversarial epochs of the defaults, which on the bundled PBMC subset measured C2ST 0.70 and
#: rare agreement 0.78 in ~20 s (150 epochs / 30 AE epochs / 128 hidden: 0.76 and 0.41)
TEST_OVERRIDES: dict = {
    "epochs": 300,
    "ae_epochs": 60,
    "batch_size": 128,
    "checkpoint_every": 0,
}


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
            threads: int | None = None, resume: bool = False) -> dict[str, Path]:
    """Train the GAN on the train cells of *input* and write the stage outputs.

    Returns ``{"h5ad": PREFIX.synthetic.h5ad, "model": PREFIX.generator.pt,
    "log": PREFIX.gan_log.tsv}``.  With *resume*, training continues from
    ``OUTDIR/PREFIX.gan.ckpt.pt`` (written every ``checkpoint_every`` epochs and
    deleted after success) and reaches the same final epoch.
    """
    config.validate()
    dev = resolve_device(device)
    outdir = check_writable_dir(Path(outdir))
    out_h5 = outdir / f"{prefix}{C.SUFFIX_SYNTHETIC}"
    out_model = outdir / f"{prefix}{C.SUFFIX_GENERATOR}"
    out_log = outdir / f"{prefix}{C.SUFFIX_GAN_LOG}"
    ckpt = outdir / f"{prefix}{SUFFIX_CKPT}"
    if Path(input).resolve() in {p.resolve() for p in (out_h5, out_model, out_log)}:
        raise GarageError("an output would overwrite the input", "choose another --outdir or --prefix")
    set_threads(threads)
    set_seed(config.seed)
    adata = _read_input(input)
    model = GarageGAN.setup(adata, config)
    del adata
    if not model.meta["sample"]:
        model.meta["sample"] = prefix
    # fail on a bad composition (unknown type, too few cells) before training, not after
    composition_counts(model.meta["categories"], model.meta["train_type_counts"], config.n_cells,
                       config.composition, config.cells_per_type, config.rare_threshold)
    model.check_memory(dev)
    if ckpt.exists() and not resume:
        logger.warning("ignoring an old checkpoint %s (pass --resume to continue it)", ckpt.name)
    t0 = time.perf_counter()
    rows = model.train(dev, ckpt if config.checkpoint_every else None, resume=resume)
    t_train = time.perf_counter() - t0
    syn = model.generate(config.n_cells, config.composition, config.cells_per_type,
                         seed=config.seed, device=dev)
    syn.uns[C.UNS_KEY].update({
        "input": Path(input).name,
        "device": dev.type,
        "train_seconds": round(t_train, 2),
        "n_train_cells": int(model.data.n),
        "n_seeds": int(model.data.seed_rows.numel()),
    })
    model.save(out_model)
    write_log(rows, out_log)
    write_h5ad_atomic(syn, out_h5)
    with contextlib.suppress(FileNotFoundError):
        ckpt.unlink()
    logger.info("wrote %s (%d cells, %d types) after %.1f s of training",
                out_h5.name, syn.n_obs, syn.obs[C.OBS_CELL_TYPE].nunique(), t_train)
    return {"h5ad": out_h5, "model": out_model, "log": out_log}


def run_generate(model, outdir, prefix: str, *, n_cells: int | None = None, composition: str = "original",
                 cells_per_type=None, seed: int = 0, device: str = "cpu") -> dict[str, Path]:
    """More synthetic cells from a saved ``PREFIX.generator.pt``, without retraining.

    With the training run's seed, composition and cell number, the cells equal
    those of ``PREFIX.synthetic.h5ad``.  Returns ``{"h5ad": PREFIX.generated.h5ad}``.
    """
    dev = resolve_device(device)
    outdir = check_writable_dir(Path(outdir))
    out = outdir / f"{prefix}{SUFFIX_GENERATED}"
    if Path(model).resolve() == out.resolve():
        raise GarageError("output would overwrite the model", "choose another --outdir or --prefix")
    set_seed(seed)
    gan = GarageGAN.load(model, device=dev)
    syn = gan.generate(n_cells, composition, cells_per_type, seed=seed, device=dev)
    syn.uns[C.UNS_KEY].update({"model": Path(model).name, "device": dev.type})
    syn.uns[C.UNS_KEY] = _h5_safe(syn.uns[C.UNS_KEY])
    write_h5ad_atomic(syn, out)
    logger.info("wrote %s (%d cells)", out.name, syn.n_obs)
    return {"h5ad": out}
