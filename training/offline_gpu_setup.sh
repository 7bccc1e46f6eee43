# Sourced by the offline GPU runs (offline_gpu_grpo.sh, offline_gpu_qppo.sh) with the parcels as arguments
# (none: use this machine's environment and data as they are, e.g. the same loop on this CPU): unpack and
# check the parcels of `python -m training.offline_bundle pack`; install the carried wheels into
# $STAGE/site (no index, no deps: the machine's own torch, accelerate and CUDA libraries stay); merge the shipped
# SFT adapter into SmolLM2-135M in float32 on the CPU, as training.pipeline's sft stage does here (the same
# weights, bit for bit). Sets STAGE, LOG, SFT, t0 (the script's start), PYTHONPATH, MEDIQ_DATA_DIR and the
# function stamp; installs traps that print the end of a failing step's log and, on any exit, put the logs in
# $OUT/logs.tar.gz (the files under $OUT are what comes back from the machine).
: "${OUT:?set OUT to a folder for the results}"
STAGE=${STAGE:-/tmp/offline}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT" "$STAGE"
LOG="$STAGE/logs"; mkdir -p "$LOG"
t0=$(date +%s)
stamp() { echo "[offline-gpu +$(( $(date +%s) - t0 ))s] $*"; }
newest_log() { ls -t "$LOG"/*.log "$LOG"/*.txt 2>/dev/null | head -1; }
trap 'stamp "FAILED (exit $?); $(newest_log) ends:"; f=$(newest_log); [ -n "$f" ] && tail -n 15 "$f"' ERR
# Temporary files stay out of $OUT: the machine returns at most 8 files from it.
trap 'tar -czf "$STAGE/logs.tar.gz" -C "$STAGE" logs 2>/dev/null && mv "$STAGE/logs.tar.gz" "$OUT/logs.tar.gz"' EXIT

{ nvidia-smi || true; python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'; } > "$LOG/machine.txt" 2>&1
if [ "$#" -eq 0 ]; then
  # No parcels: run with this machine's own environment and data (a CPU run here, or a machine set up by hand).
  export PYTHONPATH="$PWD"
  stamp "no parcels: this environment's packages, data from ${MEDIQ_DATA_DIR:-../shared/data}"
else
  if [ ! -f "$STAGE/site/.installed" ]; then
    python3 -m training.offline_bundle unpack --dest "$STAGE" "$@" > "$LOG/unpack.log" 2>&1
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$STAGE/site" "$STAGE"/wheels/*.whl >> "$LOG/unpack.log" 2>&1
    touch "$STAGE/site/.installed"
  fi
  export PYTHONPATH="$STAGE/site:$PWD" MEDIQ_DATA_DIR="$STAGE/data"
fi
stamp "ready; $(python3 -c 'import trl, transformers, peft, datasets; print("trl", trl.__version__, "transformers", transformers.__version__, "peft", peft.__version__, "datasets", datasets.__version__)')"

SFT="$STAGE/sft-pipe/sft/model"
if [ ! -f "$STAGE/sft-pipe/.merged" ]; then  # a merge cut short is redone, not reused
  python3 -m training.pipeline --model smollm2 --out "$STAGE/sft-pipe" --stages sft --device cpu \
    --sft-adapter mediq_env/data/adapters/smollm2-doctor > "$LOG/sft_merge.log" 2>&1
  touch "$STAGE/sft-pipe/.merged"
fi
stamp "SFT merged"
