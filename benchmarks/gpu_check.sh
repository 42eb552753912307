#!/usr/bin/env bash
# The prepared GPU check (issue 15), one device run: the CUDA encoding benchmark (torch fp32 / fp16 /
# bf16), the -m gpu tests, what --backend auto picks on CUDA, and the HeteroMix mini / dev.mini
# quality gate for torch fp16 / bf16 / fp32 on CUDA (build-index + bench heteromix, dense).
#
#   here:            bash benchmarks/gpu_check.sh prepare   # writes .devgpu/ (ignored): wheels + mini data
#   on the device:   bash benchmarks/gpu_check.sh run       # carry .devgpu; results in $OUT/results.tgz
#   local smoke:     SMOKE=1 DEVICE=cpu PY=.venv/bin/python OUT=/tmp/devout bash benchmarks/gpu_check.sh run
#
# The device machine (docs/BACKENDS.md, "CUDA") has torch, sentence-transformers and onnxruntime (CPU)
# but no registry: prepare carries the wheels it lacks (faiss-cpu, orjson, bm25s, PyStemmer; faiss-gpu
# needs CUDA 12 libraries the image lacks and is over the 64 MiB carry) and the mini records of the
# corpus with mini.ids.txt and dev.mini, which the run copies to ../shared/data/heteromix.
# TOKENIZERS_PARALLELISM defaults to false here, as in the recorded run (2026-12-04): tokenization
# then runs on one thread.
set -u
if [ "${1:-}" = prepare ]; then
  set -e
  mkdir -p .devgpu/whl .devgpu/data
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .devgpu/whl \
    faiss-cpu==1.15.1 orjson==3.13.0 bm25s==0.3.16 PyStemmer==3.1.0
  D=../shared/data/heteromix
  cp $D/mini.ids.txt $D/queries.dev.mini.jsonl .devgpu/data/
  .venv/bin/python - <<'PY'
import gzip
import json

ids = set(open("../shared/data/heteromix/mini.ids.txt", encoding="utf-8").read().split())
with gzip.open("../shared/data/heteromix/corpus.jsonl.gz", "rt", encoding="utf-8") as f, \
        gzip.open(".devgpu/data/corpus.jsonl.gz", "wt", encoding="utf-8") as out:
    kept = sum(out.write(line) > 0 for line in f if json.loads(line)["id"] in ids)
print(f"{kept} mini records in .devgpu/data/corpus.jsonl.gz")
PY
  du -sh .devgpu
  exit 0
fi
[ "${1:-}" = run ] || { echo "usage: $0 prepare|run" >&2; exit 2; }
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}
DEVICE=${DEVICE:-cuda}
SMOKE=${SMOKE:-0}
PY=${PY:-python3}
R=$PWD
RES=/tmp/gpu_res
mkdir -p "$RES" "$OUT"
T0=$(date +%s)
stamp() { echo "=== $(( $(date +%s) - T0 ))s $*"; }
pack() { tar czf "$RES.tgz.tmp" --exclude='*.trec' --exclude='*.png' -C "$RES" . && mv "$RES.tgz.tmp" "$OUT/results.tgz"; }

if [ "$SMOKE" = 0 ]; then
  stamp setup
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .devgpu/whl/*.whl || echo "pip install failed"
  export PYTHONPATH=/tmp/site:$R
  mkdir -p ../shared/data/heteromix && cp .devgpu/data/* ../shared/data/heteromix/
fi
DATA=$R/.devgpu/data
IDS=$DATA/mini.ids.txt
UNITS=2000; LIMIT=""; BIGUNITS=20000
if [ "$SMOKE" = 1 ]; then head -100 "$DATA/mini.ids.txt" > /tmp/smoke.ids; IDS=/tmp/smoke.ids; UNITS=100; LIMIT="--limit 30"; BIGUNITS=200; fi

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1
  $PY - <<'EOF'
import importlib.metadata as md, torch
for n in ["torch", "sentence-transformers", "transformers", "numpy", "faiss-cpu", "onnxruntime", "onnxruntime-gpu", "orjson", "openvino"]:
    try:
        print(n, md.version(n))
    except md.PackageNotFoundError:
        print(n, None)
print("cuda", torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
try:
    import onnxruntime as ort
    print("onnxruntime providers", ort.get_available_providers())
except Exception as e:
    print("onnxruntime", e)
EOF
  lscpu | grep -E "Model name|^CPU\(s\)"
} > "$RES/env.txt" 2>&1
cat "$RES/env.txt"; pack

stamp "encode benchmark, batch 64, $UNITS units"
timeout 150 $PY benchmarks/encode_backends.py --model bundled:heteromix-minilm-l6 \
  --options torch:float32,torch:float16,torch:bfloat16 --units $UNITS --rounds 3 --name h200-cuda \
  --results "$RES" 2>&1 | grep -v '^ ' | tail -8
pack

stamp "pytest -m gpu"
timeout 200 $PY -m pytest -m gpu -p no:cacheprovider -q tests/training/test_gpu.py tests/index/test_gpu_shards.py \
  > "$RES/pytest_gpu.log" 2>&1; echo "pytest rc=$?"; tail -25 "$RES/pytest_gpu.log"
pack

stamp "calibrate on $DEVICE"
timeout 90 $PY -m retriever calibrate --model bundled:heteromix-minilm-l6 --device "$DEVICE" --remeasure \
  > "$RES/calibrate.txt" 2>&1; echo "calibrate rc=$?"; tail -12 "$RES/calibrate.txt"
pack

for P in float16 bfloat16 float32; do
  stamp "gate $P: build"
  timeout 150 $PY -m retriever build-index "$DATA/corpus.jsonl.gz" --ids "$IDS" --out /tmp/idx-$P \
    --model bundled:heteromix-minilm-l6 --device "$DEVICE" --backend torch --precision $P --batch-size 128 \
    --no-progress > "$RES/build-$P.log" 2>&1; echo "build rc=$?"; tail -3 "$RES/build-$P.log"
  stamp "gate $P: bench"
  timeout 150 $PY -m retriever bench heteromix --corpus "$DATA/corpus.jsonl.gz" --ids "$IDS" \
    --questions "$DATA/queries.dev.mini.jsonl" --index /tmp/idx-$P --device "$DEVICE" --backend torch --precision $P \
    --methods dense --scenarios all,source-soft $LIMIT --out "$RES/gate-$P" --no-progress --no-results-md \
    > "$RES/bench-$P.log" 2>&1; echo "bench rc=$?"; tail -4 "$RES/bench-$P.log"
  pack
done

stamp "encode benchmark, batch 256, $BIGUNITS units"
timeout 120 $PY benchmarks/encode_backends.py --model bundled:heteromix-minilm-l6 \
  --options torch:float32,torch:float16,torch:bfloat16 --units $BIGUNITS --rounds 2 --batch-size 256 \
  --name h200-cuda-b256 --results "$RES" 2>&1 | grep -v '^ ' | tail -8
pack
stamp done
