#!/usr/bin/env python3
"""Print the exact one-line message GARAGE gives for every bad input in the test tables.

Reuses the tables of tests/python/test_preprocess.py, test_reliability.py and test_run.py, so
the list here is the list CI checks.  Run:  .venv/bin/python scripts/bad_input_messages.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "python"))

import test_preprocess as tp  # noqa: E402
import test_reliability as tr  # noqa: E402
import test_run as trun  # noqa: E402

from garage import gan, gat  # noqa: E402
from garage.datasets import dataset_path  # noqa: E402
from garage.preprocess import PreprocessConfig, run_preprocess  # noqa: E402

GARAGE = [sys.executable, "-m", "garage.cli"]


def run(argv):
    p = subprocess.run([*GARAGE, *argv], capture_output=True, text=True)
    err = [ln for ln in p.stderr.splitlines() if ln.startswith("Error:")]
    return p.returncode, (err[0] if err else p.stderr.strip().splitlines()[-1:])


def main() -> None:
    small = dataset_path("pbmc3k_small")
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        print("| stage | bad input | exit | message |\n|---|---|---|---|")
        for name, (path, args, _) in tp._bad_cases(tmp, small).items():
            rc, msg = run(["preprocess", "--input", str(path), "--prefix", name, "--outdir", str(tmp / "o"), *args])
            print(f"| preprocess | {name} | {rc} | `{msg}` |")
        pp = run_preprocess(small, tmp, "s", PreprocessConfig(label_key="cell_type"))["h5ad"]
        if True:  # the stage files, built the way test_reliability's fixture builds them
            (tmp / "rel").mkdir()
            out = tmp / "rel"
            g = gat.run_gat(pp, out, "s", gat.GATConfig(**gat.TEST_OVERRIDES))
            n = gan.run_gan(g["h5ad"], out, "s", gan.GANConfig(**gan.TEST_OVERRIDES))
            import anndata as ad

            from garage import constants as C

            a = ad.read_h5ad(n["h5ad"])
            a[:, : a.n_vars // 2].copy().write_h5ad(out / "other.h5ad")
            b = a.copy(); del b.obs[C.OBS_CELL_TYPE]; b.write_h5ad(out / "nolabel.h5ad")
            a[:0].copy().write_h5ad(out / "empty.h5ad")
            r = ad.read_h5ad(pp)
            ad.AnnData(r.layers[C.LAYER_COUNTS], obs=r.obs[[]], var=r.var[[]]).write_h5ad(out / "raw.h5ad")
            (out / "corrupt.pt").write_bytes(b"\0junk" * 50)
            (out / "t.csv").write_text("cell,g1\nc1,1\n")
            files = {"pp": pp, "seeds": g["h5ad"], "gat_model": g["model"], "synthetic": n["h5ad"],
                     "generator": n["model"], "other_genes": out / "other.h5ad", "nolabel": out / "nolabel.h5ad",
                     "empty": out / "empty.h5ad", "raw": out / "raw.h5ad", "corrupt_model": out / "corrupt.pt",
                     "table": out / "t.csv"}
        for name, (argv, _) in sorted(tr.CASES.items()):
            argv = [a.format(**{k: str(v) for k, v in files.items()}) for a in argv]
            rc, msg = run([*argv, "--prefix", "x", "--outdir", str(tmp / "o2")])
            print(f"| {argv[0]} | {name} | {rc} | `{msg}` |")
        for text, _ in trun.test_bad_samplesheets.pytestmark[0].args[1]:
            sheet = tmp / "sheet.csv"
            sheet.write_text(text.format(small=small))
            rc, msg = run(["run", "--input", str(sheet), "--outdir", str(tmp / "o3")])
            label = text.splitlines()[0] + " / " + (text.splitlines()[1] if len(text.splitlines()) > 1 else "")
            print(f"| run | samplesheet `{label[:60]}` | {rc} | `{msg}` |")


if __name__ == "__main__":
    main()
