# Per-type C2ST and spread (÷ its control) of GARAGE against scVI, mean over seeds (round 22 of the
# notes; read only). The reading is bench/per_type_read.py's; this names round 22's tables.
# Run: .venv/bin/python bench/results/round22/per_type.py > bench/results/round22/per_type.txt
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from bench.per_type_read import main  # noqa: E402

main(["--table", "baron_mouse:test:0,1,2:garage:garage_ts4", "--table", "mouse_bladder:test:0,1,2:garage:garage_ts4",
      "--table", "baron_mouse:val:13,14:garage_lr2", "--table", "pbmc3k:val:13,14,15:garage_lr2",
      "--table", "kang_ifnb:val:13,14:garage_lr2", "--table", "sc_mixology:val:13,14:garage_lr2"])
