#!/usr/bin/env bash
# Question-level GRPO (training/question_grpo.py) from the shipped SFT doctor on one GPU machine with no
# internet access, from the parcels of `python -m training.offline_bundle pack` (see its docstring).
#
# Run in the repo root there:  OUT=/path/for/results MINUTES=6 bash training/offline_gpu_grpo.sh .xfer*
#
# 1-2. offline_gpu_setup.sh: unpack, install the carried wheels, merge the shipped SFT adapter;
# 3. question-level GRPO with bf16 weights, MINUTES of wall clock (it stops after the step that crosses
#    the budget, saving a checkpoint and adapter/); PIPELINE_MINUTES > 0 also runs the episode pipeline's
#    GPU path (training.pipeline --device cuda: demos, PPO, held-out eval) beside it, for that long;
# 4. copy the adapter, metrics and logs to $OUT (one tar, plus the adapter weights).
set -euo pipefail
MINUTES=${MINUTES:-6}
PIPELINE_MINUTES=${PIPELINE_MINUTES:-0}
# The recorded run's settings; GRPO_ARGS is appended (a flag given twice: the last wins).
# (8 demo rounds, 1,896 states, took about 5 minutes to build on the H200 machine's CPUs beside another job.)
GRPO_DEFAULTS="--demo-rounds 2 --torch-threads 8 --num-generations 8 --per-device-train-batch-size 32
  --gradient-accumulation-steps 8 --learning-rate 1e-4 --beta 0.04 --max-steps 400"
GRPO_ARGS=${GRPO_ARGS:-}
DEVICE_FLAGS=${DEVICE_FLAGS:---no-use-cpu --bf16}   # "--use-cpu --no-bf16" rehearses the whole script on a CPU
# shellcheck source=training/offline_gpu_setup.sh
source "$(dirname "$0")/offline_gpu_setup.sh" "$@"

pipe_pid=
if [ "$PIPELINE_MINUTES" != 0 ]; then
  timeout -s INT "$(( PIPELINE_MINUTES * 60 ))" python3 -m training.pipeline --model smollm2 --out "$STAGE/gpu-pipe" \
    --device cuda --stages demos,sft,ppo,eval --sources builtin,askdocs,medqa --sft-adapter mediq_env/data/adapters/smollm2-doctor \
    --ppo-updates "${PPO_UPDATES:-10}" --episodes-per-update 16 --save-steps 5 --eval-limit "${EVAL_LIMIT:-3}" \
    > "$LOG/gpu_pipeline.log" 2>&1 &
  pipe_pid=$!
fi

# shellcheck disable=SC2086
python3 -m training.question_grpo --model "$SFT" --output-dir "$STAGE/qg" \
  $DEVICE_FLAGS --max-minutes "$MINUTES" --save-steps 10 $GRPO_DEFAULTS $GRPO_ARGS > "$LOG/question_grpo.log" 2>&1 \
  || stamp "question_grpo exited with $?"
stamp "GRPO done"
[ -n "$pipe_pid" ] && { wait "$pipe_pid" || stamp "pipeline exited with $?"; }

cp "$STAGE/qg/adapter/adapter_model.safetensors" "$OUT/" 2>/dev/null || stamp "no adapter/ (see question_grpo.log)"
tar -czf "$OUT/results.tar.gz" -C "$STAGE" logs \
  $(cd "$STAGE" && ls -d qg/metrics.jsonl qg/states.json qg/config.json qg/adapter/adapter_config.json \
      gpu-pipe/*/manifest.json gpu-pipe/ppo/metrics.jsonl gpu-pipe/eval/heldout.json gpu-pipe/eval/heldout.md 2>/dev/null)
stamp "results in $OUT"
tail -5 "$LOG/question_grpo.log"
