# The trainer container's entry point in every training pod (PyTorchJob and TrainJob):
#   sh launch.sh -m r1v_job --config ... (torchrun's arguments)
# It waits for data preparation, checks the model and data set are on the volume, runs the
# trainer's cheap preflight, then torchrun, and turns the outcome into the exit codes the restart
# policies read (trainer.restartPolicy ExitCode; docs/operations.md, "Restarts"):
#   0    training finished
#   2    permanent: model or data set missing, bad recipe or arguments (r1v_job exits 2 on those);
#        a retry would fail the same way, so the job fails at once
#   200  crashed: torchrun reports a failed worker as exit 1 whatever the cause (CUDA error, NCCL
#        timeout, OOM in a worker); retried, and the trainer resumes from its last checkpoint
#   128+N  killed by signal N (OOM killer, node drain): retried
# The Training Operator treats 1-127 as permanent and 128-255 as retryable; the chart's
# TrainingRuntime restates that rule as a podFailurePolicy.
# With R1V_MAX_RESTARTS set (a PyTorchJob under ExitCode: the operator's runPolicy.backoffLimit counts
# container restarts under OnFailure/Always only, and ExitCode recreates pods instead), this pod
# gives up with exit 2 once it has been started more than R1V_MAX_RESTARTS times again without a
# new checkpoint in R1V_OUTPUT_DIR: a crash that repeats before any progress is not retried forever.
PERMANENT=2
CRASHED=200

say() { echo "r1v launch: $*" >&2; }

# A code below 128 from a step that should not fail that way is a crash; 128+ is a kill.
retryable() { if [ "$1" -ge 128 ]; then echo "$1"; else echo "$CRASHED"; fi; }

if [ -n "${R1V_DATA_MARKER:-}" ]; then
  until [ -f "$R1V_DATA_MARKER" ]; do
    say "waiting for $R1V_DATA_MARKER (the data-prep Job writes it when the volume is filled)"
    sleep "${R1V_WAIT_SECONDS:-15}"
  done
fi

if [ ! -f "$R1V_MODEL_PATH/config.json" ]; then
  say "no model at $R1V_MODEL_PATH (config.json missing) on claim $R1V_CLAIM: install with dataPrep.enabled=true, or copy the model there and set model.path (docs/operations.md, step 6)"
  exit "$PERMANENT"
fi
if [ ! -e "$R1V_DATASET_PATH" ]; then
  say "no data set at $R1V_DATASET_PATH on claim $R1V_CLAIM: install with dataPrep.enabled=true, or copy it there and set dataset.path (docs/operations.md, step 6)"
  exit "$PERMANENT"
fi

if [ -n "${R1V_MAX_RESTARTS:-}" ]; then
  newest=$(ls -d "$R1V_OUTPUT_DIR"/checkpoint-* 2>/dev/null | sed 's/.*checkpoint-//' | sort -n | tail -n 1)
  newest=${newest:-0}
  starts="$R1V_OUTPUT_DIR/.r1v-starts/${R1V_POD_NAME:-pod}"  # "<newest checkpoint step> <starts at it>"
  mkdir -p "${starts%/*}"
  read -r seen count < "$starts" 2>/dev/null || { seen=; count=0; }
  [ "$seen" = "$newest" ] || count=0
  count=$((count + 1))
  if [ "$count" -gt $((R1V_MAX_RESTARTS + 1)) ]; then
    say "started $count times at checkpoint step $newest with no newer checkpoint (runPolicy.backoffLimit $R1V_MAX_RESTARTS): not retrying; the crash is in the earlier pods' logs. Delete $starts to allow more tries"
    exit "$PERMANENT"
  fi
  echo "$newest $count" > "$starts"
fi

if [ "${R1V_PREFLIGHT:-1}" = "1" ]; then
  # Every input check of the trainer without loading the model: seconds, on one process.
  python "$@" --preflight_only true
  rc=$?
  if [ "$rc" -eq "$PERMANENT" ]; then
    say "preflight: bad recipe or arguments (above); not retrying"
    exit "$PERMANENT"
  elif [ "$rc" -ne 0 ]; then
    say "preflight exited $rc; treating it as a crash"
    exit "$(retryable "$rc")"
  fi
fi

# torchrun in the background so that the pod's SIGTERM (PID 1 here is sh) reaches it.
torchrun "$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM INT
wait "$child"
rc=$?
# A trapped signal ends `wait` early: wait until torchrun itself has exited.
while kill -0 "$child" 2>/dev/null; do
  wait "$child"
  rc=$?
done
case "$rc" in
  0) exit 0 ;;
  "$PERMANENT") say "torchrun rejected its arguments; not retrying"; exit "$PERMANENT" ;;
  *) say "torchrun exited $rc: a worker failed (its log is above)"; exit "$(retryable "$rc")" ;;
esac
