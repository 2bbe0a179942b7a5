#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md in one script (issue 17), for a machine that has a GPU for minutes only.
#
# Needs: a CUDA GPU; python with torch, torchvision, h5py, numpy, typer and rich importable (nothing is installed:
# the lent machines have no network); this checkout; the real CIFAR-10 JPEG archive at $CIFAR_TGZ (default
# data/local/cifar10-jpg.tar.gz, a folder that .git/info/exclude keeps out of git). Writes one JSON per figure under
# $OUT (default ./gpu-bench-out) and prints one line per figure. About 8 minutes on an H100/H200.
#
#   OUT=/tmp/out bash pipelines/gpu-bench.sh
#   SMOKE=1 OUT=/tmp/smoke bash pipelines/gpu-bench.sh   # every step on this CPU, synthetic data, tiny sizes: proves
#                                                          # the commands still parse and run before a GPU is spent
#
# Figures: 1 extract vs the bare forward; 2 distill alone / cached / online (memory); 3 host vs resident vs compiled;
# 4-5 float16 vs int8 rows: cache bytes, `cache verify`, and the real `distill` command's img/s from each.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-bench-out}
CIFAR_TGZ=${CIFAR_TGZ:-data/local/cifar10-jpg.tar.gz}
SMOKE=${SMOKE:-0}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" FEATCACHE_HOME="$OUT/store" COLUMNS=160 GPU_BENCH_SMOKE="$SMOKE"
fc() { python -m featcache "$@"; }

# -- prerequisites, each a one-line reason -----------------------------------------------------------------------
python - <<'EOF'
import importlib, sys
missing = [m for m in ("torch", "torchvision", "h5py", "numpy", "typer", "rich") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu-bench: python lacks {', '.join(missing)}; install them (pip install -e .) and rerun")
import os, torch
if os.environ["GPU_BENCH_SMOKE"] == "1":
    print("gpu-bench: SMOKE=1, every step on the CPU at tiny sizes (no figure means anything)", flush=True)
    sys.exit(0)
if not torch.cuda.is_available():
    sys.exit("gpu-bench: no CUDA device is visible to torch; this script measures the GPU paths only")
print(f"gpu-bench: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
EOF
W=$(python -c "import os; print(min(16, len(os.sched_getaffinity(0))))")
if [ "$SMOKE" = 1 ]; then  # the same commands, sized for a CPU: synthetic images, 32 px, a few steps
  DATA=(--dataset synthetic); TEST=(--split test -o num_test=64); TRAIN=(-o num_train=128 -o num_test=64)
  BIG=32; W=0
else
  if [ ! -f "$CIFAR_TGZ" ]; then
    echo "gpu-bench: $CIFAR_TGZ is missing; copy ../shared/data/cifar10-jpg.tar.gz there (or set CIFAR_TGZ)" >&2
    exit 2
  fi
  if [ ! -d "$OUT/data/cifar10-jpg/test" ]; then
    mkdir -p "$OUT/data" && tar xzf "$CIFAR_TGZ" -C "$OUT/data"
  fi
  DATA=(--dataset cifar10 --data-root "$OUT/data/cifar10-jpg"); TEST=(--split test); TRAIN=(-o train_per_class=1000)
  BIG=224
fi
# pick SMOKE-ARGS -- REAL-ARGS: the repeats and steps of a figure, or a token few with SMOKE=1
pick() {
  local smoke=(); while [ "$1" != "--" ]; do smoke+=("$1"); shift; done; shift
  if [ "$SMOKE" = 1 ]; then echo "${smoke[@]}"; else echo "$@"; fi
}
FEW=(--steps 2 --warmup 1 --rounds 1 --)

line() {  # one line per figure from a bench JSON
  python - "$@" <<'EOF'
import json, sys
kind, path = sys.argv[1], sys.argv[2]
r = json.load(open(path))
if kind == "extract":
    print(f"extract {r['teacher']}@{r['image_size']} {r['precision']}: {r['extract_images_per_s']:,.0f} img/s = "
          f"{r['ratio']:.3f} of the bare forward ({r['forward_images_per_s']:,.0f}); goal >= 0.90")
else:
    for name, x in r["results"].items():
        if name.startswith("bare"):
            continue
        mem = x.get("memory_vs_student")
        print(f"distill {r['student']}@{r['image_size']} b{r['batch_size']} {name}: {x['images_per_s']:,.0f} img/s, "
              f"{x['speed_vs_student']:.3f} of alone, {x.get('speed_vs_bare', float('nan')):.3f} of its bare loop"
              + (f", memory {mem:.3f} of alone" if mem else ""))
EOF
}

# 1. extract: ResNet50 @ 224 px bf16 on real CIFAR-10 test (10k JPEGs), ratio to the bare forward (goal >= 0.90)
fc bench extract --teacher resnet50 "${DATA[@]}" "${TEST[@]}" --image-size $BIG --batch-size 256 --precision bf16 \
  --workers "$W" $(pick --rounds 1 --iters 2 --min-seconds 0.1 -- --rounds 2) --json-out "$OUT/extract-resnet50-224.json" > /dev/null
line extract "$OUT/extract-resnet50-224.json"

# 2. distill: MobileNetV3-L @ 224 px, batch 128: alone vs 1 and 2 cached teachers vs the same online
#    (goals: cached >= 0.97 of alone, memory <= alone + 2 %)
fc bench distill --student mobilenetv3 --teacher resnet50 --teacher resnet18 "${DATA[@]}" "${TRAIN[@]}" \
  --image-size $BIG --batch-size 128 $(pick "${FEW[@]}" --steps 60 --warmup 15 --rounds 2) --workers "$W" \
  --json-out "$OUT/distill-mnv3-224.json" > /dev/null
line distill "$OUT/distill-mnv3-224.json"

# 3. fast paths at 32 px: the plain host path vs --resident vs --resident --compile reduce-overhead
for arm in host resident; do
  flag=$([ $arm = host ] && echo --no-resident || echo --resident)
  fc bench distill --student mobilenetv3 --teacher resnet50 "${DATA[@]}" "${TRAIN[@]}" --image-size 32 \
    --batch-size 512 $(pick "${FEW[@]}" --steps 100 --warmup 30 --rounds 2) --workers "$W" $flag \
    --json-out "$OUT/distill-mnv3-32-$arm.json" > /dev/null
  line distill "$OUT/distill-mnv3-32-$arm.json"
done
if [ "$SMOKE" = 1 ]; then
  echo "distill --compile reduce-overhead: skipped with SMOKE=1 (CUDA graphs)"
else
  fc bench distill --student mobilenetv3 --teacher resnet50 "${DATA[@]}" "${TRAIN[@]}" --image-size 32 \
    --batch-size 512 --steps 100 --warmup 30 --rounds 1 --workers "$W" --resident --compile reduce-overhead \
    --json-out "$OUT/distill-mnv3-32-compiled.json" > /dev/null || \
    echo "distill --compile reduce-overhead: failed on this machine (see the output above)"
  [ -f "$OUT/distill-mnv3-32-compiled.json" ] && line distill "$OUT/distill-mnv3-32-compiled.json"
fi

# 4 and 5. float16 vs int8 rows of ResNet50 @ 224, each in its own store, then the same student trained from each
# through the real `distill` command (epochs, evaluation, checkpoints): img/s from each run's summary, the bytes of
# each cache, `cache verify` at this size. Weights are random: speed and bytes do not depend on them; the accuracy
# parity of int8 rows is issue 25's CPU table (docs/results.md).
for dtype in float16 int8; do
  fc extract --teacher resnet50 --weights random "${DATA[@]}" "${TRAIN[@]}" --image-size $BIG --batch-size 256 \
    --precision bf16 --workers "$W" --dtype $dtype --cache-dir "$OUT/store-$dtype" > "$OUT/extract-$dtype.log" 2>&1
  fc distill --student mobilenetv3 --teacher resnet50 --cache-dir "$OUT/store-$dtype" "${DATA[@]}" "${TRAIN[@]}" \
    --image-size $BIG --batch-size 128 --epochs 1 --workers "$W" --run-dir "$OUT/runs/mnv3-$dtype" \
    > "$OUT/distill-$dtype.log" 2>&1
  FEATCACHE_HOME="$OUT/store-$dtype" fc cache ls --json > "$OUT/cache-ls-$dtype.json"
  FEATCACHE_HOME="$OUT/store-$dtype" fc cache verify resnet50 > "$OUT/cache-verify-$dtype.log" 2>&1 \
    && echo "cache verify ($dtype): ok" || echo "cache verify ($dtype): FAILED, see $OUT/cache-verify-$dtype.log"
done
python - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = {d: json.loads((out / "runs" / f"mnv3-{d}" / "summary.json").read_text()) for d in ("float16", "int8")}
for d, r in runs.items():
    size = sum(c["bytes"] for c in json.loads((out / f"cache-ls-{d}.json").read_text()))
    print(f"distill from {d} rows (real path, 1 epoch): {r['images_per_s']:,.0f} img/s, "
          f"{r['images_per_s'] / runs['float16']['images_per_s']:.3f} of float16; cache {size / 2**20:,.1f} MiB")
EOF

# 6. nvjpeg / GPU decode: not implemented in featcache (decode runs in DataLoader workers on the host).
echo "gpu decode: not implemented (host decode in $W workers); nothing to measure"
echo "gpu-bench: done; JSON in $OUT"
