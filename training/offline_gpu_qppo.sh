#!/usr/bin/env bash
# Iterated question-level PPO from the shipped SFT doctor on one GPU machine with no internet access, from the
# parcels of `python -m training.offline_bundle pack` (examples/gpu_pipeline.md, "Question-level PPO, iterated").
#
# Run in the repo root there:  OUT=/path/for/results MINUTES=7 bash training/offline_gpu_qppo.sh PARCEL...
#
# Each iteration i samples 8 replies per train state from the last policy (training.rejection_sampling, float32,
# temperature 0.8, MAX_STATES states drawn with seed i) and updates it with clipped PPO (training.question_ppo,
# the CPU iterations' settings, KL logged against the SFT model); the next iteration samples from the result.
# MINUTES counts from the script's start, unpacking included. A new iteration starts only while the last one's
# duration still fits, and its sampling stops early enough to leave PPO_SECONDS for the update. After each
# iteration its samples, curve and adapter go to $OUT/iter<i>.tar.gz (at most MAX_PACKS a call: the device tool
# returns 8 files), and the logs go to $OUT/logs.tar.gz on any exit, so a run stopped at its time limit keeps
# every finished iteration. Run again on the same machine (STAGE is kept while the machine stays warm), it
# continues the chain: finished iterations are skipped and an iteration cut short resumes (sampling state by state,
# the update from its checkpoint), so a second call picks up where the first call's time limit struck. Only the
# iterations finished in this call are packed. Here, rehearse it on the CPU with
# DEVICE=cpu MAX_STATES=4 ITERATIONS=2 STATE_BATCH=2.
set -euo pipefail
MINUTES=${MINUTES:-9}              # wall clock for the whole script, unpacking included (whole minutes)
PPO_SECONDS=${PPO_SECONDS:-200}    # kept for the update when sampling is cut to fit (the last update's time once known;
                                   # an H200 took 170 s for 215 states)
ITERATIONS=${ITERATIONS:-7}        # the chain's length, over every call
MAX_PACKS=${MAX_PACKS:-7}          # iterations packed per call: the device tool returns 8 files, logs.tar.gz is one
MAX_STATES=${MAX_STATES:-215}
DEVICE=${DEVICE:-cuda}
THREADS=${THREADS:-8}
STATE_BATCH=${STATE_BATCH:-32}
STATES_FILE=${STATES_FILE:-}   # a demo_states.jsonl built earlier (python -m training.rejection_sampling --stage states)
SAMPLE_ARGS=${SAMPLE_ARGS:-}
PPO_ARGS=${PPO_ARGS:-}
# A step's 4 states in one call on a GPU, where launches bound the update (tested equal to one state per call up to
# float rounding; the GPU speed-up is not measured yet: benchmarks/perf/update_speed.py --device cuda). Set 0 to turn off.
BATCH_STATES=${BATCH_STATES:-$([ "$DEVICE" = cuda ] && echo 1 || echo 0)}
case "$MINUTES" in ''|*[!0-9]*) echo "MINUTES must be a whole number of minutes, got '$MINUTES'"; exit 2;; esac
# shellcheck source=training/offline_gpu_setup.sh
source "$(dirname "$0")/offline_gpu_setup.sh" "$@"

prev=$SFT
last=0
packed=0
# An iteration's pack goes to $OUT; .packed marks one that did (a call killed between the update and the pack
# leaves an iteration finished but not yet sent, and the next call sends it).
pack_iteration() {
  tar -czf "$STAGE/iter$1.tar.gz" -C "$STAGE" "qs-$1/samples.jsonl" "qs-$1/config.json" "qp-$1/metrics.jsonl" "qp-$1/summary.json" \
    "qp-$1/config.json" "qp-$1/adapter"
  mv "$STAGE/iter$1.tar.gz" "$OUT/iter$1.tar.gz"
  touch "$STAGE/qp-$1/.packed"
  packed=$(( packed + 1 ))
}
# The update's whole time (summary.json counts a resumed update's earlier part too), or the wall time if longer.
update_seconds() { python3 -c "import json,sys; print(max(int(sys.argv[2]), int(json.load(open(sys.argv[1]))['train_seconds'])))" "$@"; }
for i in $(seq 1 "$ITERATIONS"); do
  if [ "$packed" -ge "$MAX_PACKS" ]; then
    stamp "not starting iteration $i: this call has packed $MAX_PACKS iterations; run the script again to go on"
    break
  fi
  if [ -f "$STAGE/qp-$i/summary.json" ]; then  # finished by an earlier call on this machine
    prev="$STAGE/qp-$i/policy"
    if [ -z "$STATES_FILE" ] && [ -f "$STAGE/qs-$i/demo_states.jsonl" ]; then STATES_FILE="$STAGE/qs-$i/demo_states.jsonl"; fi
    PPO_SECONDS=$(( $(update_seconds "$STAGE/qp-$i/summary.json" 0) + 30 ))
    if [ -f "$STAGE/qp-$i/.packed" ]; then
      stamp "iteration $i was finished by an earlier call"
    else
      pack_iteration "$i"
      stamp "iteration $i was finished by an earlier call; packed now"
    fi
    continue
  fi
  now=$(date +%s)
  left=$(( MINUTES * 60 - (now - t0) ))
  if [ "$i" -gt 1 ] && [ "$last" -gt "$left" ]; then
    stamp "not starting iteration $i: the last took ${last}s and ${left}s are left"
    break
  fi
  if [ -f "$STAGE/qp-$i/checkpoint/state.pt" ]; then
    # Its update had begun on these samples: sampling more now would change what the checkpoint was trained on.
    stamp "iteration $i: resuming its update on the samples it began with"
  else
    # Sampling stops in time for the update: a partial samples.jsonl is a valid (smaller) iteration.
    sample_minutes=$(python3 -c "print(max(1.0, ($left - $PPO_SECONDS) / 60))")
    states_flag=()
    if [ -n "$STATES_FILE" ]; then states_flag=(--states-file "$STATES_FILE"); fi
    # shellcheck disable=SC2086
    python3 -m training.rejection_sampling --model "$prev" --output-dir "$STAGE/qs-$i" --states demos "${states_flag[@]}" \
      --max-states "$MAX_STATES" --seed "$i" --temperature 0.8 --stage sample --device "$DEVICE" --dtype float32 \
      --state-batch "$STATE_BATCH" --torch-threads "$THREADS" --max-minutes "$sample_minutes" $SAMPLE_ARGS > "$LOG/sample-$i.log" 2>&1
    if [ -z "$STATES_FILE" ]; then STATES_FILE="$STAGE/qs-$i/demo_states.jsonl"; fi
    stamp "iteration $i sampled: $(grep -c '"replies"' "$STAGE/qs-$i/samples.jsonl") of $MAX_STATES states, $(grep -c '"error"' "$STAGE/qs-$i/samples.jsonl" || true) failed"
  fi
  ppo_start=$(date +%s)
  batch_flag=()
  if [ "$BATCH_STATES" = 1 ]; then batch_flag=(--batch-states); fi
  # shellcheck disable=SC2086
  python3 -m training.question_ppo --model "$prev" --ref-model "$SFT" --samples "$STAGE/qs-$i/samples.jsonl" \
    --output-dir "$STAGE/qp-$i" --epochs 2 --no-rescore --device "$DEVICE" --torch-threads "$THREADS" "${batch_flag[@]}" $PPO_ARGS > "$LOG/ppo-$i.log" 2>&1
  PPO_SECONDS=$(( $(update_seconds "$STAGE/qp-$i/summary.json" $(( $(date +%s) - ppo_start ))) + 30 ))
  prev="$STAGE/qp-$i/policy"
  # This call's sampling and the whole update: a resumed update's earlier part counts, as the next one will need it.
  last=$(( ppo_start - now + PPO_SECONDS ))
  pack_iteration "$i"
  stamp "iteration $i done in $(( $(date +%s) - now ))s (an iteration now takes about ${last}s)"
done
stamp "results in $OUT"
