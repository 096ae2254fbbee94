"""Does the shape of the library-size model cost realism?  (issue 13.2, round 27)

GARAGE draws a cell's library size from a log-normal per type x condition group whose mean follows
the cell's code (``--library conditional``): the residual is Gaussian in log space.  Real log
library sizes are often skewed inside a type (cbmc's type_05: skewness -1.8), which a Gaussian
residual cannot follow.  This probe regenerates a finished run's cells from its saved model with
only the library sampler changed, and scores each arm with ``garage evaluate`` against the run's
own holdout:

- ``model``: the sampler as shipped (with the run's training seed as ``--seed``, the run's own
  output again).
- ``shape``: the same mean and code shift, with the Gaussian residual replaced by a draw from the
  group's train cells' standardised log sizes (``(log size - group mean) / group sd``): the
  empirical shape of the group's sizes, centred and scaled as the model's.  Groups under
  ``--min-cells`` keep the Gaussian.  (It standardises the sizes, not the residuals after the
  code's shift: where the code explains part of the size, the real skew reaches the draw diluted.)
- ``marginal``: the group's train cells' own log sizes, drawn at random, ignoring the code.

The train sizes are read from the split file: each train cell's HVG count sum (the model's own
measure; it fits its parameters on the train cells less its small validation share).
Nothing is trained; the model file is read only.

Run:  python -m bench.library_probe --run bench/_work/fidelity/cbmc/val/garage_s0 \\
          --real bench/_work/fidelity/cbmc/cbmc.val.preprocessed.h5ad --out probe.json
      python -m bench.library_probe --summarize probe*.json     # shape - model over the files
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ARMS = ("model", "shape", "marginal")


def group_logsizes(real_path: Path, categories: list[str], conditions: list[str]) -> list[np.ndarray]:
    """Per type x condition group (the model's order), its train cells' log library sizes, as the
    model measures them: the sum of the HVG counts (``layers['counts']``) in the stages' own label
    and condition columns."""
    import anndata as ad
    from garage import constants as C

    a = ad.read_h5ad(real_path)
    obs = a.obs
    train = (obs[C.OBS_SPLIT].astype(str) == C.SPLIT_TRAIN).to_numpy()
    lab = obs[C.OBS_LABEL].astype(str).to_numpy()
    has_cond = C.OBS_CONDITION in obs and len(conditions) > 1
    cond = obs[C.OBS_CONDITION].astype(str).to_numpy() if has_cond else None
    logs = np.log(np.maximum(np.asarray(a.layers[C.LAYER_COUNTS].sum(1)).ravel().astype(float), 1.0))
    out = []
    for t in categories:
        for c in (conditions if has_cond else [None]):
            m = train & (lab == t) & ((cond == c) if has_cond else True)
            out.append(logs[m])
    return out


def make_sampler(arm: str, pools: list[np.ndarray], min_cells: int, seed: int = 0):
    """A replacement for ``sample_library_conditional`` (same signature) drawing as *arm* does.

    The arms draw their picks from a generator of their own (seeded by *seed*) and use generation's
    generator exactly as the shipped sampler does.  What generation draws after the sizes is not
    all shared: the count draws consume that generator by amounts that depend on the sizes, so
    count noise differs between arms, and so do the codes of cells after the first chunk
    (``GEN_CHUNK``, 4,096 cells) and of redrawn rows."""
    import torch

    from garage.gan._train import sample_library_conditional

    if arm == "model":
        return sample_library_conditional
    own = np.random.default_rng(seed)
    std = [((p - p.mean()) / p.std()) if len(p) >= max(2, min_cells) and p.std() > 0 else None
           for p in pools]

    def sampler(lib_params, groups, codes, coef, code_mean, resid_scale, gen):
        p = lib_params[groups]
        shift = (codes[:, : coef.shape[0]] - code_mean[groups]) @ coef
        z = torch.randn(groups.shape[0], generator=gen, device=p.device, dtype=p.dtype)
        g_np = groups.cpu().numpy()
        out = (p[:, 0] + shift + resid_scale * p[:, 1] * z).cpu().numpy().astype(np.float64)
        mean, sd = (p[:, 0] + shift).cpu().numpy(), p[:, 1].cpu().numpy()
        u_np = own.random(groups.shape[0])
        for g in np.unique(g_np):
            rows = np.flatnonzero(g_np == g)
            pick = np.minimum((u_np[rows] * max(1, len(pools[g]))).astype(int), max(0, len(pools[g]) - 1))
            if arm == "marginal" and len(pools[g]):
                out[rows] = pools[g][pick]
            elif arm == "shape" and std[g] is not None:
                out[rows] = mean[rows] + resid_scale * sd[rows] * std[g][pick]
        return torch.from_numpy(np.exp(out)).to(device=p.device, dtype=p.dtype).clamp_min(1.0)

    return sampler


def _c2st(evaldir: Path, types: list[str]) -> dict:
    import pandas as pd

    m = json.loads((evaldir / "eval.garage_metrics.json").read_text())
    c = m["metrics"]["c2st_auc"]
    res = {"c2st_auc": c["value"], "control": c["control"], "c2st_gap": c["value"] - c["control"]}
    pt = pd.read_csv(evaldir / "eval.per_type.tsv", sep="\t").set_index("cell_type")
    res["per_type_c2st"] = {t: float(pt.loc[t, "c2st"]) for t in types if t in pt.index}
    res["per_type_spread"] = {t: float(pt.loc[t, "spread_ratio"]) for t in types if t in pt.index}
    return res


def summarize(paths: list[Path], arm: str = "shape") -> tuple[list[str], np.ndarray]:
    """One line per probe file (its run, the model arm's and *arm*'s C2ST gap, the difference) and
    the differences, for the files that scored both arms."""
    lines, diffs = [], []
    for p in sorted(paths):
        d = json.loads(Path(p).read_text())
        arms = d["arms"]
        if "model" not in arms or arm not in arms:
            continue
        m, v = arms["model"]["c2st_gap"], arms[arm]["c2st_gap"]
        diffs.append(v - m)
        lines.append(f"{d['run']}: model {m:+.4f}, {arm} {v:+.4f}, difference {v - m:+.4f}")
    return lines, np.asarray(diffs)


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "--summarize":  # python -m bench.library_probe --summarize FILE.json ...
        from ._common import t_halfwidth

        lines, d = summarize([Path(p) for p in argv[1:]])
        if not len(d):
            raise SystemExit("bench.library_probe --summarize: no file scored both the model and shape arms")
        print("\n".join(lines))
        print(f"shape - model, C2ST gap: {len(d)} runs, mean {d.mean():+.4f} [95 % t {d.mean() - t_halfwidth(d):+.4f}, "
              f"{d.mean() + t_halfwidth(d):+.4f}], lower in {int((d < 0).sum())} of {len(d)}")
        return 0
    ap = argparse.ArgumentParser(prog="python -m bench.library_probe", description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a bench.fidelity GARAGE run folder")
    ap.add_argument("--real", type=Path, required=True, help="the split's preprocessed file")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--min-cells", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0, help="generation seed")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    bad = [x for x in a.arms.split(",") if x not in ARMS]
    if bad:  # an unknown arm would draw as the model does, silently
        ap.error(f"--arms: unknown {', '.join(bad)} (known: {', '.join(ARMS)})")
    import torch
    from click.testing import CliRunner

    import garage.gan._model as gm
    from garage.cli import main as cli

    model = next(a.run.glob("*.generator.pt"))
    meta = torch.load(model, map_location="cpu", weights_only=False)
    if "lib_coef" not in meta:  # the patched sampler would never be called: every arm the same
        raise SystemExit(f"{model}: not a model with the conditional library (--library conditional)")
    cats, conds = list(meta["categories"]), list(meta.get("conditions") or [])
    pools = group_logsizes(a.real, cats, conds)
    result = {"run": str(a.run), "real": str(a.real), "seed": a.seed, "min_cells": a.min_cells, "arms": {}}
    original = gm.sample_library_conditional
    with tempfile.TemporaryDirectory() as tmp:
        for arm in a.arms.split(","):
            gm.sample_library_conditional = make_sampler(arm, pools, a.min_cells, seed=1000 + a.seed)
            try:
                r = CliRunner().invoke(cli, ["-q", "generate", "--model", str(model), "--prefix", arm,
                                             "--outdir", tmp, "--seed", str(a.seed), "--device", "cpu"],
                                       catch_exceptions=False)
            finally:
                gm.sample_library_conditional = original
            if r.exit_code:
                raise SystemExit(f"generate ({arm}) failed: {r.output}")
            ev = Path(tmp) / f"{arm}_eval"
            subprocess.run([sys.executable, "-m", "garage.cli", "-q", "evaluate", "--real", str(a.real),
                            "--synthetic", str(Path(tmp) / f"{arm}.generated.h5ad"), "--prefix", "eval",
                            "--outdir", str(ev), "--seed", "0"], check=True)
            result["arms"][arm] = _c2st(ev, cats)
            print(f"{arm:9s} c2st gap {result['arms'][arm]['c2st_gap']:+.4f}", flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
