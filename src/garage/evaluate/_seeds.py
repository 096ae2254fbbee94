"""Seed cells and seed provenance for the seed-aware privacy metrics.

* ``--seeds PREFIX.seeds.h5ad`` (``garage gat``): ``obs['garage_seed']`` marks the
  seed cells; obs names are the preprocessed file's.  Only ``obs`` is read.
* ``--provenance PREFIX.provenance.tsv`` (``garage gan``, PRIVATE): lines starting
  with ``#`` are a header, then tab-separated ``synthetic_cell``, ``cell_type``,
  ``seed_cell`` (the real obs name of the seed, empty for cells made from noise).

Both must belong to the real and synthetic files being evaluated; anything else is
a :class:`GarageError` (exit code 2), because seed metrics on the wrong seeds would
silently say nothing.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .. import constants as C
from ..errors import GarageError

logger = logging.getLogger(__name__)


def _is_true(values) -> np.ndarray:
    s = pd.Series(values)
    if s.dtype == bool:
        return s.to_numpy()
    return s.astype(str).str.strip().str.lower().isin(["true", "1", "yes", "1.0"]).to_numpy()


def read_seed_names(seeds) -> np.ndarray:
    """Obs names of the seed cells from a seeds file path, an AnnData, or names."""
    if seeds is None:
        return np.asarray([], dtype=str)
    if isinstance(seeds, (str, Path)):
        import anndata as ad
        import h5py

        path = Path(seeds)
        if not path.is_file() or not path.name.endswith(".h5ad"):
            raise GarageError(f"seeds file {path} is not an .h5ad file",
                              "pass the PREFIX.seeds.h5ad written by garage gat")
        try:
            with h5py.File(path, "r") as fh:
                obs = ad.io.read_elem(fh["obs"])
        except Exception as exc:  # corrupt / not AnnData
            raise GarageError(
                f"could not read obs of seeds file {path.name}: {type(exc).__name__}",
                "pass the complete PREFIX.seeds.h5ad written by garage gat",
            ) from None
    elif hasattr(seeds, "obs"):
        obs = seeds.obs
    else:
        return np.asarray([str(x) for x in seeds], dtype=object)
    if C.OBS_SEED not in obs.columns:
        raise GarageError(
            f"the seeds file has no obs['{C.OBS_SEED}']",
            "pass the PREFIX.seeds.h5ad written by garage gat",
        )
    return obs.index.astype(str).to_numpy()[_is_true(obs[C.OBS_SEED])]


def read_provenance(provenance) -> pd.DataFrame | None:
    """The provenance table (columns ``constants.PROVENANCE_COLUMNS``, str) or None."""
    if provenance is None:
        return None
    if isinstance(provenance, pd.DataFrame):
        df = provenance.copy()
    else:
        path = Path(provenance)
        if not path.is_file():
            raise GarageError(f"provenance file {path} does not exist", "check the path")
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            raise GarageError(f"provenance file {path.name} is not text",
                              "pass the PREFIX.provenance.tsv written by garage gan") from None
        body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
        try:
            df = pd.read_csv(io.StringIO(body), sep="\t", dtype=str, keep_default_na=False)
        except Exception as exc:
            raise GarageError(f"could not parse provenance file {path.name}: {exc}".split("\n")[0],
                              "pass the PREFIX.provenance.tsv written by garage gan") from None
    missing = [c for c in C.PROVENANCE_COLUMNS if c not in df.columns]
    if missing:
        raise GarageError(
            f"the provenance table lacks column(s) {missing} (has {list(df.columns)[:6]})",
            "pass the PREFIX.provenance.tsv written by garage gan (columns "
            + ", ".join(C.PROVENANCE_COLUMNS) + ")",
        )
    df = df[list(C.PROVENANCE_COLUMNS)].astype(object)
    df = df.where(df.notna(), "").astype(str)
    for c in df.columns:
        df[c] = df[c].str.strip().replace({"nan": "", "None": ""})
    return df


def attach(space, seed_names: np.ndarray, prov: pd.DataFrame | None, synthetic_names) -> None:
    """Mark seed train rows (``space.seed``) and each synthetic cell's seed (``space.provenance``).

    Seeds named by the provenance table count as seeds too, so ``--provenance``
    alone enables every seed metric.
    """
    train_names = np.asarray(space.train_names, dtype=object)
    pos = pd.Series(np.arange(len(train_names)), index=pd.Index(train_names))
    if pos.index.has_duplicates:
        pos = pos[~pos.index.duplicated()]
    names = set(map(str, seed_names))
    if prov is not None:
        names |= set(prov.loc[prov[C.OBS_SEED_ID] != "", C.OBS_SEED_ID])
    if not names and prov is None and len(seed_names) == 0:
        return
    unknown = sorted(n for n in names if n not in pos.index)
    if unknown:
        raise GarageError(
            f"{len(unknown)} seed cell(s) are not train cells of the real file (e.g. "
            f"{unknown[:3]})",
            "pass the seeds/provenance files of the same run as --real (seeds are train cells of "
            "that PREFIX.preprocessed.h5ad)",
        )
    mask = np.zeros(len(train_names), dtype=bool)
    mask[pos.loc[sorted(names)].to_numpy()] = True
    if not mask.any():
        logger.warning("no seed cells marked: seed-aware privacy metrics are skipped")
        return
    space.seed = mask
    if prov is None:
        return
    syn_names = pd.Index(np.asarray(synthetic_names).astype(str))
    if syn_names.has_duplicates:
        raise GarageError("the synthetic file has duplicate cell names", "write each cell once")
    listed = pd.Index(prov["synthetic_cell"])
    foreign = listed.difference(syn_names)
    if len(foreign):
        raise GarageError(
            f"the provenance table names {len(foreign)} synthetic cell(s) that are not in the "
            f"synthetic file (e.g. {list(foreign[:3])})",
            "pass the PREFIX.provenance.tsv written together with this PREFIX.synthetic.h5ad",
        )
    prov = prov.drop_duplicates("synthetic_cell").set_index("synthetic_cell")
    row = prov.reindex(syn_names)
    typed = row["cell_type"].fillna("").to_numpy()
    lab = space.labels["synthetic"]
    clash = (typed != "") & (typed != lab)
    if clash.any():
        raise GarageError(
            f"{int(clash.sum())} synthetic cell(s) have another cell type in the provenance table",
            "pass the PREFIX.provenance.tsv written together with this PREFIX.synthetic.h5ad",
        )
    seed_of = row[C.OBS_SEED_ID].fillna("").to_numpy()
    out = np.full(len(syn_names), -1)
    has = seed_of != ""
    out[has] = pos.loc[seed_of[has]].to_numpy()
    n_unlisted = int(row["cell_type"].isna().sum())
    if n_unlisted:
        logger.warning("%d synthetic cells are not in the provenance table (treated as unseeded)",
                       n_unlisted)
    space.provenance = out
