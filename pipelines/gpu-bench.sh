#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md in one script (issue 17), for a machine that has a GPU for minutes only.
#
# Needs: a CUDA GPU; python with torch, torchvision, h5py, numpy, typer and rich importable (nothing is installed:
# the lent machines have no network); this checkout; the real CIFAR-10 JPEG archive at $CIFAR_TGZ (default
# data/local/cifar10-jpg.tar.gz, a folder that .git/info/exclude keeps out of git). Writes one JSON per figure under
# $OUT (default ./gpu-bench-out) and prints one line per figure. About 6 minutes on an H100/H200.
#
#   OUT=/tmp/out bash pipelines/gpu-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-bench-out}
CIFAR_TGZ=${CIFAR_TGZ:-data/local/cifar10-jpg.tar.gz}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" FEATCACHE_HOME="$OUT/store" COLUMNS=160
fc() { python -m featcache.cli "$@"; }

# -- prerequisites, each a one-line reason -----------------------------------------------------------------------
python - <<'EOF'
import importlib, sys
missing = [m for m in ("torch", "torchvision", "h5py", "numpy", "typer", "rich") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu-bench: python lacks {', '.join(missing)}; install them (pip install -e .) and rerun")
import torch
if not torch.cuda.is_available():
    sys.exit("gpu-bench: no CUDA device is visible to torch; this script measures the GPU paths only")
print(f"gpu-bench: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
EOF
if [ ! -f "$CIFAR_TGZ" ]; then
  echo "gpu-bench: $CIFAR_TGZ is missing; copy ../shared/data/cifar10-jpg.tar.gz there (or set CIFAR_TGZ)" >&2
  exit 2
fi
DATA="$OUT/data"
if [ ! -d "$DATA/cifar10-jpg/test" ]; then
  mkdir -p "$DATA" && tar xzf "$CIFAR_TGZ" -C "$DATA"
fi
ROOT="$DATA/cifar10-jpg"
W=$(python -c "import os; print(min(16, len(os.sched_getaffinity(0))))")

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
fc bench extract --teacher resnet50 --dataset cifar10 --data-root "$ROOT" --split test --image-size 224 \
  --batch-size 256 --precision bf16 --workers "$W" --rounds 2 --json-out "$OUT/extract-resnet50-224.json" > /dev/null
line extract "$OUT/extract-resnet50-224.json"

# 2. distill: MobileNetV3-L @ 224 px, batch 128: alone vs 1 and 2 cached teachers vs the same online
#    (goals: cached >= 0.97 of alone, memory <= alone + 2 %)
fc bench distill --student mobilenetv3 --teacher resnet50 --teacher resnet18 --dataset cifar10 --data-root "$ROOT" \
  -o train_per_class=1000 --image-size 224 --batch-size 128 --steps 60 --warmup 15 --rounds 2 --workers "$W" \
  --json-out "$OUT/distill-mnv3-224.json" > /dev/null
line distill "$OUT/distill-mnv3-224.json"

# 3. fast paths at 32 px: the plain host path vs --resident vs --resident --compile reduce-overhead
fc bench distill --student mobilenetv3 --teacher resnet50 --dataset cifar10 --data-root "$ROOT" \
  -o train_per_class=1000 --image-size 32 --batch-size 512 --steps 100 --warmup 30 --rounds 2 --workers "$W" \
  --no-resident --json-out "$OUT/distill-mnv3-32-host.json" > /dev/null
line distill "$OUT/distill-mnv3-32-host.json"
fc bench distill --student mobilenetv3 --teacher resnet50 --dataset cifar10 --data-root "$ROOT" \
  -o train_per_class=1000 --image-size 32 --batch-size 512 --steps 100 --warmup 30 --rounds 2 --workers "$W" \
  --resident --json-out "$OUT/distill-mnv3-32-resident.json" > /dev/null
line distill "$OUT/distill-mnv3-32-resident.json"
fc bench distill --student mobilenetv3 --teacher resnet50 --dataset cifar10 --data-root "$ROOT" \
  -o train_per_class=1000 --image-size 32 --batch-size 512 --steps 100 --warmup 30 --rounds 1 --workers "$W" \
  --resident --compile reduce-overhead --json-out "$OUT/distill-mnv3-32-compiled.json" > /dev/null || \
  echo "distill --compile reduce-overhead: failed on this machine (see the output above)"
[ -f "$OUT/distill-mnv3-32-compiled.json" ] && line distill "$OUT/distill-mnv3-32-compiled.json"

# 4. nvjpeg / GPU decode: not implemented in featcache (decode runs in DataLoader workers on the host).
echo "gpu decode: not implemented (host decode in $W workers); nothing to measure"
echo "gpu-bench: done; JSON in $OUT"
