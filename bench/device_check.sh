#!/usr/bin/env bash
# One prepared run on a lent GPU machine (issue 17.5): prove the cuda path, then time the whole
# `garage` run on cuda at scale with scVI on the same GPU beside it.  Everything it measures is
# written under $OUT as it goes, so a run cut off at its limit still returns what it finished.
#
#   PY=python3 DEADLINE_S=520 SIZES=100000,10000 bash bench/device_check.sh
# (device tool: carry [".whl", ".devdata"], timeout_s a little above DEADLINE_S)
#
# Writes bench/results/scale_cuda.{json,md,png} (copied to $OUT). Expects: the packages the GPU image lacks
# as wheels in .whl/ (installed to /tmp/site), PBMC 3k at .devdata/pbmc3k.h5ad (the benchmark's
# input; ../shared does not travel), and $OUT (defaults to ./device_out).
set -u -o pipefail
T0=$(date +%s)
PY=${PY:-python3}
DEADLINE_S=${DEADLINE_S:-520}
SIZES=${SIZES:-100000,10000}
SCVI_EPOCHS=${SCVI_EPOCHS:-20}
OUT=${OUT:-$PWD/device_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
left() { echo $(( DEADLINE_S - ($(date +%s) - T0) )); }
log() { echo "[device_check $(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/device_check.log"; }

if [ -z "${NO_WHEELS:-}" ] && [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { log "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD/src:$PWD
else
  export PYTHONPATH=$PWD/src:$PWD
fi
[ -f .devdata/pbmc3k.h5ad ] && export GARAGE_BENCH_PBMC3K=$PWD/.devdata/pbmc3k.h5ad

log "machine: $(nproc) cpus; $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)"
"$PY" - <<'EOF' 2>&1 | tee -a "$OUT/device_check.log"
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
for m in ("torch_geometric", "anndata", "scanpy", "ot", "skmisc", "leidenalg", "scvi", "garage"):
    try:
        mod = importlib.import_module(m)
        print(m, getattr(mod, "__version__", "?"))
    except Exception as exc:  # report and go on: the stage that needs it records the failure
        print(m, "IMPORT FAILED:", type(exc).__name__, str(exc)[:200])
EOF

# GPU memory in use, sampled every 0.5 s for the whole run (the stages are separate processes)
nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv,noheader -lms 500 \
  > "$OUT/gpu_memory.csv" 2>/dev/null &
SMI=$!

log "1/2 cuda tests (tests/python/test_cuda.py)"
t=$(left); [ "$t" -gt 240 ] && t=240; [ "$t" -lt 30 ] && t=30
timeout "$t" "$PY" -m pytest -m gpu tests/python/test_cuda.py -q -p no:cacheprovider \
  -o addopts="" 2>&1 | tail -n 30 | tee "$OUT/test_cuda.log"

log "2/2 scaling benchmark on cuda: sizes $SIZES"
first=1
for n in ${SIZES//,/ }; do
  budget=$(( $(left) - 15 ))
  if [ "$budget" -lt 60 ]; then log "skip $n cells: ${budget}s left"; continue; fi
  scvi=(--scvi-max-epochs "$SCVI_EPOCHS")
  [ "$first" = 1 ] || scvi=(--skip-scvi)
  merge=(); [ "$first" = 1 ] || merge=(--merge)
  log "size $n: budget ${budget}s (${scvi[*]})"
  timeout "$budget" "$PY" -m bench.bench_scale --sizes "$n" --device "${DEVICE:-cuda}" --name "${NAME:-scale_cuda}" \
    --mem-cap-gb 100 --timeout-min $(( budget / 60 )) "${scvi[@]}" "${merge[@]}" ${EXTRA_ARGS:-} \
    --note "H200 (lent GPU machine), GAT and GAN on cuda, preprocess and evaluate on its CPUs; scVI on the same GPU for ${SCVI_EPOCHS} epochs, projected to its default schedule" \
    2>&1 | tail -n 40 | tee -a "$OUT/bench_scale.log"
  cp bench/results/"${NAME:-scale_cuda}".* "$OUT/" 2>/dev/null
  first=0
done
kill "$SMI" 2>/dev/null
cp bench/results/"${NAME:-scale_cuda}".* "$OUT/" 2>/dev/null
log "done"
