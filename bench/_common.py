"""Shared benchmark helpers: resampled large inputs and child-process measurement.

Peak memory is the child's max RSS (``resource.getrusage(RUSAGE_CHILDREN)``
read in a fresh wrapper process, so each measurement is of one command only).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# GARAGE_BENCH_PBMC3K: another copy of the file (a lent GPU machine has no ../shared)
PBMC3K = Path(os.environ.get("GARAGE_BENCH_PBMC3K") or REPO.parent / "shared" / "data" / "pbmc3k.h5ad")
RESULTS = REPO / "bench" / "results"
WORK = REPO / "bench" / "_work"

_WRAPPER = r"""
import json, os, resource, signal, subprocess, sys, time
opts = json.loads(sys.argv[1])
def die_with_parent():
    # Linux: SIGTERM when the parent dies, so a benchmark that is stopped does not leave its
    # command running and writing into a run folder that the next benchmark uses (a no-op where
    # the C library has no prctl)
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
die_with_parent()
if opts.get("parent") and os.getppid() != opts["parent"]:  # the benchmark died before the line above
    sys.exit(1)
cmd = sys.argv[2:]
log = open(opts["log"], "w") if opts.get("log") else None
t0 = time.perf_counter()
proc = subprocess.Popen(cmd, stderr=log, start_new_session=bool(opts.get("cap_mb") or opts.get("timeout_s")),
                        preexec_fn=die_with_parent)
status, polled = "ok", 0.0
cap, limit = opts.get("cap_mb"), opts.get("timeout_s")
if cap or limit:
    import psutil
    me = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            rss = sum(p.memory_info().rss for p in [me, *me.children(recursive=True)]) / 2**20
        except psutil.Error:
            rss = 0.0
        polled = max(polled, rss)
        over_cap = cap is not None and rss > cap
        over_time = limit is not None and time.perf_counter() - t0 > limit
        if over_cap or over_time:
            status = "memory cap" if over_cap else "timeout"
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            break
        time.sleep(0.5)
rc = proc.wait()
wall = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
if status == "ok" and rc != 0:
    status = "failed"
print(json.dumps({"rc": rc, "wall_s": wall, "peak_mb": ru.ru_maxrss / 1024, "status": status,
                  "polled_peak_mb": polled, "cpu_s": ru.ru_utime + ru.ru_stime}))
"""


def measure(cmd: list[str], env: dict | None = None, *, mem_cap_mb: float | None = None,
            timeout_s: float | None = None, log: Path | None = None) -> dict:
    """Run *cmd*; return rc, wall seconds and peak RSS (MB) of that command alone.

    Optional guards for scaling runs: *mem_cap_mb* kills the command (and its
    children) once their summed RSS passes the cap, *timeout_s* once it runs
    longer; ``status`` says ``ok``, ``failed``, ``memory cap`` or ``timeout``.
    ``cpu_s`` is the user + system CPU time of the command and its children:
    on a shared machine it moves far less with the load than the wall time.
    *log* receives the command's stderr (else it is inherited).
    """
    opts = {"cap_mb": mem_cap_mb, "timeout_s": timeout_s, "log": str(log) if log else None,
            "parent": os.getpid()}
    proc = subprocess.run(
        [sys.executable, "-c", _WRAPPER, json.dumps(opts), *map(str, cmd)],
        stdout=subprocess.PIPE, text=True, env=env or os.environ.copy(),
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def git_commit(repo: Path = REPO) -> str:
    """Short commit of the benchmarked code, with ``+dirty`` when src/ has local changes; *repo*:
    the checkout (or worktree) whose code ran, this one by default."""
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _resample_plan(src: Path, n_cells: int, seed: int):
    import anndata as ad
    import scipy.sparse as sp

    a = ad.read_h5ad(src)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.n_obs, size=n_cells)
    return a, sp.csr_matrix(a.X), rng, idx


def _thin(X, rng, thin: float):
    X.data = rng.binomial(X.data.astype(np.int64), thin).astype(np.float32)
    X.eliminate_zeros()
    return X


def _resampled_obs(a, idx, start: int = 0):
    obs = a.obs.iloc[idx].copy()
    obs.index = [f"cell{i}" for i in range(start, start + len(idx))]
    return obs


def resample_counts(src: Path, n_cells: int, seed: int = 0, thin: float = 0.9):
    """A larger real-like dataset: cells drawn with replacement, counts binomially thinned.

    Thinning keeps every resampled cell distinct while preserving each type's
    expression profile; labels travel with the cells.  In memory; for large
    sizes use :func:`write_resampled`, which writes the same cells chunk by chunk.
    """
    import anndata as ad

    a, X, rng, idx = _resample_plan(src, n_cells, seed)
    return ad.AnnData(X=_thin(X[idx], rng, thin), obs=_resampled_obs(a, idx), var=a.var.copy())


def write_csr_h5ad(path: Path, obs, var, parts) -> Path:
    """Write an h5ad whose X (CSR float32, int32 indices) arrives as row blocks.

    *parts* yields CSR blocks in row order (their rows add up to ``len(obs)``);
    memory stays bounded by one block.  anndata writes X in one piece only, so
    obs/var go through anndata and X is appended with h5py in anndata's own CSR
    layout.  Written to a temporary name and renamed.
    """
    import anndata as ad
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    n_obs, n_vars = len(obs), len(var)
    ad.AnnData(obs=obs, var=var).write_h5ad(tmp)  # obs/var/uns layout, no X yet
    with h5py.File(tmp, "a") as f:
        g = f.create_group("X")
        g.attrs["encoding-type"] = "csr_matrix"
        g.attrs["encoding-version"] = "0.1.0"
        g.attrs["shape"] = np.array([n_obs, n_vars], dtype=np.int64)
        data = g.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32,
                                chunks=(1 << 20,))
        indices = g.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32,
                                   chunks=(1 << 20,))
        indptr = np.zeros(n_obs + 1, dtype=np.int64)
        nnz = row = 0
        for part in parts:
            if part.shape[1] != n_vars:
                raise ValueError(f"a row block has {part.shape[1]} columns, var has {n_vars} rows")
            k = part.nnz
            data.resize((nnz + k,))
            indices.resize((nnz + k,))
            data[nnz:nnz + k] = part.data.astype(np.float32, copy=False)
            indices[nnz:nnz + k] = part.indices.astype(np.int32, copy=False)
            indptr[row + 1:row + 1 + part.shape[0]] = nnz + part.indptr[1:]
            nnz += k
            row += part.shape[0]
        if row != n_obs:
            raise ValueError(f"row blocks hold {row} rows, obs has {n_obs}")
        g.create_dataset("indptr", data=indptr)
    os.replace(tmp, path)
    return path


def write_resampled(src: Path, n_cells: int, path: Path, seed: int = 0, thin: float = 0.9,
                    chunk: int = 50_000) -> Path:
    """Write ``resample_counts(src, n_cells, seed, thin)`` to *path*, chunk by chunk.

    The same random stream is consumed in the same order, so the file holds
    exactly the cells :func:`resample_counts` returns, but memory stays bounded
    by one chunk (1,000,000 cells x 13,714 genes is ~6 GB of CSR in memory, and
    the in-memory version needs ~3x that).
    """
    a, X, rng, idx = _resample_plan(src, n_cells, seed)
    parts = (_thin(X[idx[s:s + chunk]], rng, thin) for s in range(0, n_cells, chunk))
    return write_csr_h5ad(path, _resampled_obs(a, idx), a.var.copy(), parts)


def table_start(rows: list[dict], name: str, tag: str, title: str, argv) -> tuple:
    """Write ``bench/results/NAME_TAG.csv`` from *rows*; return it as a DataFrame and the first lines
    of the matching markdown report (title, the pastable command, the machine): (DataFrame, lines)."""
    import shlex

    import pandas as pd

    df = pd.DataFrame(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    df.to_csv(RESULTS / f"{name}_{tag}.csv", index=False)
    args = argv if argv is not None else sys.argv[1:]
    return df, [f"# {title} ({tag})", "", f"Command: `python -m bench.{name} {shlex.join(args)}`", "",
                f"Machine: {machine()}", ""]


def paired_table(df, keys, a: str, b: str, who: str) -> list[str]:
    """Markdown lines comparing columns ``K_a`` and ``K_b`` of *df* (one row per paired run): per
    dataset ``mean a / mean b (mean difference, its range)`` over the runs that have the figure on
    both sides, then one line on the C2ST gap over all runs (*who* names side b)."""
    lines = ["| dataset | runs | " + " | ".join(f"{k}: {a} / {b} (diff, range)" for k in keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    for ds, g in df.groupby("dataset", sort=False):
        cells = []
        for k in keys:
            x, y = g[f"{k}_{a}"].astype(float), g[f"{k}_{b}"].astype(float)
            both = x.notna() & y.notna()
            if not both.any():
                cells.append("–")
                continue
            d = (y - x)[both]
            cells.append(f"{x[both].mean():.3f} / {y[both].mean():.3f} ({d.mean():+.3f}, {d.min():+.3f} to {d.max():+.3f})")
        lines.append(f"| {ds} | {len(g)} | " + " | ".join(cells) + " |")
    d = (df[f"c2st_gap_{b}"] - df[f"c2st_gap_{a}"]).astype(float).dropna()
    lines += ["", f"All {len(d)} paired runs: C2ST gap lower with {who} in {int((d < 0).sum())} "
              f"(mean difference {d.mean():+.4f}, median {np.median(d):+.4f}, range {d.min():+.3f} to "
              f"{d.max():+.3f})."]
    return lines


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        # torch's intra-op threads in the training subprocesses (unset: torch uses one per core in
        # each run). Two runs sharing a 2-core machine trained 1.5x to over 4x slower unset than at
        # 1 (notes, round 19), and a rerun at another setting is not the same run, seed or not
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def write_result(name: str, rows: list[dict], command: str) -> Path:
    """Write bench/results/NAME.json and NAME.md (a table plus the command)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"command": command, "machine": machine(), "rows": rows}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2))
    cols = list(rows[0]) if rows else []
    md = [f"# {name}", "", f"Command: `{command}`", "",
          f"Machine: {payload['machine']}", "",
          "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        md.append("| " + " | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    (RESULTS / f"{name}.md").write_text("\n".join(md) + "\n")
    return RESULTS / f"{name}.md"


def train_in_process(seeds_from: Path, seed: int, threads: int, gan_overrides: dict):
    """(real AnnData, trained GarageGAN in eval mode) for a probe: one default model (with
    *gan_overrides*) trained on the train cells of a GAT output, on the CPU."""
    import anndata as ad
    import torch

    from garage._utils import set_seed
    from garage.gan import GANConfig, GarageGAN

    set_seed(seed)
    torch.set_num_threads(threads)
    real = ad.read_h5ad(seeds_from)
    model = GarageGAN.setup(real, GANConfig(seed=seed, checkpoint_every=0, **gan_overrides))
    model.train(torch.device("cpu"))
    model.net.eval()
    return real, model


def generated_codes(model, types, conds, gen) -> tuple[np.ndarray, np.ndarray]:
    """(codes, seeded mask) of a trained in-process model's generator for cells of *types* (and
    *conds*): the distribution generation draws from, drawn from *gen* in the calibration fit's
    order (within-type state, seed, then noise; ``GarageGAN.generate`` draws the noise first)."""
    import torch

    from garage.gan._train import draw_labels, pick_seeds, state_probs

    data, cfg, net = model.data, model.config, model.net
    probs = state_probs(data.state_counts, data.k_states, data.n_conds) if data.k_states > 1 else None
    lab = draw_labels(types, conds, probs, data.k_states, data.n_conds, gen)
    mask, pos = pick_seeds(data, lab, conds, cfg.seed_mix, gen)
    code = data.seed_codes[pos] if data.seed_codes is not None else None
    g = net.generator_ema if net.generator_ema is not None else net.generator
    with torch.no_grad():
        noise = torch.randn(len(types), cfg.noise_dim, generator=gen)
        z = g(noise, lab, conds if data.n_conds > 1 else None, code, mask,
              depth_input(model, types, conds, gen)).numpy()
    return z, mask.numpy()


def depth_input(model, types, conds, gen):
    """``--library depth`` models: the generator's depth input for cells of *types* (and *conds*),
    drawn from the model's quantile tables as generation draws it (after the noise); None for
    every other model (nothing drawn)."""
    if not model.config.depth_library:
        return None
    from garage.gan._train import depth_feature, sample_depth

    n_conds = max(1, len(model.meta.get("conditions") or []))
    logd = sample_depth(model.meta["depth_q"].float(), types * n_conds + conds, gen)
    return depth_feature(logd, float(model.meta["depth_mean"]), float(model.meta["depth_sd"]))


def t_halfwidth(values) -> float:
    """Half-width of the 95 % Student-t interval of the mean of *values* (nan under 2 values)."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    if v.size < 2:
        return float("nan")
    return float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))


def finished_runs(globs, log=None) -> list[tuple[Path, dict, Path]]:
    """(folder, its row.json, its synthetic file) of every bench.fidelity run folder matched by
    *globs* that finished (status ok, synthetic file present); the others are named on *log*
    (default: sys.stdout as it is at the call)."""
    import glob

    log = sys.stdout if log is None else log

    out = []
    for f in sorted({Path(p) for g in globs for p in glob.glob(g)}):
        row = json.loads((f / "row.json").read_text()) if (f / "row.json").exists() else {}
        syn = next(f.glob("*.synthetic.h5ad"), None)
        if row.get("status") != "ok" or syn is None:
            print(f"skip {f}: no finished synthetic file", file=log, flush=True)
            continue
        out.append((f, row, syn))
    return out
