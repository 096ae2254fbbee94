"""Generation at scale from a saved model: wall time, CPU time and peak RSS of ``garage generate``.

Issue 17 asks for generation written in sparse chunks, so that memory does not grow with the
number of cells asked for.  This runs ``garage generate --model M --n-cells N`` for each N, in
a child process (``bench._common.measure``), and records one row per (code, N).  To compare
two versions of the code, run it once per version with ``--label`` naming it and PYTHONPATH
pointing at that version's ``src`` (the child inherits it); rows are merged by label.

    python -m bench.bench_generate --model out/gan/pbmc100k.generator.pt \
        --cells 100000 300000 --label chunked
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._common import RESULTS, git_commit, machine, measure

NAME = "generate_scale"


def _garage_version_path() -> str:
    import garage

    return str(Path(garage.__file__).resolve().parents[1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="PREFIX.generator.pt")
    ap.add_argument("--cells", type=int, nargs="+", default=[100_000, 300_000])
    ap.add_argument("--label", required=True, help="names the code version in the table")
    ap.add_argument("--workdir", type=Path, default=Path("bench/_work/generate"))
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    out_json = RESULTS / f"{NAME}.json"
    old = json.loads(out_json.read_text())["rows"] if out_json.exists() else []
    rows = [r for r in old if r["label"] != args.label]
    for n in args.cells:
        d = args.workdir / f"{args.label}_n{n}"
        cmd = [sys.executable, "-m", "garage.cli", "-q", "generate", "--model", args.model, "--prefix", "g",
               "--outdir", d, "--n-cells", n, "--seed", 0]
        m = measure(cmd, timeout_s=3600)
        out = d / "g.generated.h5ad"
        src = _garage_version_path()
        row = {"label": args.label, "code": git_commit(Path(src).parent), "garage_src": src, "cells": n,
               "status": m.get("status", "ok" if m["rc"] == 0 else "failed"), "wall_s": round(m["wall_s"], 1),
               "cpu_s": round(m.get("cpu_s", float("nan")), 1), "peak_rss_mb": round(m["peak_mb"]),
               "file_mb": round(out.stat().st_size / 2**20, 1) if out.exists() else None}
        print(json.dumps(row), flush=True)
        rows.append(row)
    rows.sort(key=lambda r: (r["cells"], r["label"]))
    payload = {"benchmark": NAME, "model": str(args.model), "machine": machine(), "rows": rows,
               "command": "python -m bench.bench_generate " + " ".join(map(str, argv or sys.argv[1:]))}
    out_json.write_text(json.dumps(payload, indent=1))
    cols = ["label", "code", "cells", "status", "wall_s", "cpu_s", "peak_rss_mb", "file_mb"]
    md = ["# Generation at scale (`garage generate`, issue 17)", "",
          f"Model: `{args.model.name}`; machine: {payload['machine']}", "",
          "One child process per row; peak RSS of that process alone.  `label` names the code "
          "version; `garage_src` in generate_scale.json says which source tree ran.", "",
          "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    (RESULTS / f"{NAME}.md").write_text("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
