"""Print the per-type C2ST rows of this folder's bench.vae_ceiling JSONs (round 28, section 4).

Run: python bench/results/round28/ceiling_per_type.py
"""
import json
from pathlib import Path

here = Path(__file__).parent
for f in sorted(here.glob("ceiling*_cbmc_val_s*.json")):
    r = json.loads(f.read_text())[-1]
    rows = [k for k, v in r.items() if isinstance(v, dict) and "per_type_c2st" in v]
    print(f"{f.name}: pooled C2ST gap " + ", ".join(f"{k} {r[k]['c2st_gap']:+.3f}" for k in rows))
    print(f"{'type':9s} {'control':>8s} " + " ".join(f"{k:>15s}" for k in rows))
    for t in sorted(r[rows[0]]["per_type_c2st"]):
        ctl = r[rows[0]]["per_type_c2st"][t][1]
        vals = " ".join(f"{r[k]['per_type_c2st'].get(t, [float('nan')])[0]:15.3f}" for k in rows)
        print(f"{t:9s} {ctl:8.3f} {vals}")
    print()
