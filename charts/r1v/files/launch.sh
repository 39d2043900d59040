# The trainer container's entry point in every training pod (PyTorchJob and TrainJob):
#   sh launch.sh -m r1v_job --config ... (torchrun's arguments)
# It waits for data preparation, checks the model and data set are on the volume, runs the
# trainer's cheap preflight, then torchrun, and turns the outcome into the exit codes the restart
# policies read (trainer.restartPolicy ExitCode; docs/operations.md, "Signals, exit codes and
# restarts"):
#   0    training finished
#   2    permanent: model or data set missing, bad recipe or arguments (r1v_job exits 2 on those),
#        or a trainer under torchrun refused its input or lost the output_dir's lease (it creates
#        R1V_PERMANENT_FILE); a retry would fail the same way, so the job fails at once
#   3    permanent: the data-prep marker did not appear within R1V_DATA_WAIT_TIMEOUT seconds (the
#        data-prep Job failed or is stuck): the job fails instead of holding its GPUs for ever
#   143  preempted: SIGTERM (preemption, node drain, eviction) reached this pod, or a trainer on
#        another node stopped on one (it creates R1V_PREEMPTED_FILE); the trainer finished the step
#        in flight and checkpointed it. Retried, and never counted against the restart budget
#   200  crashed: torchrun reports a failed worker as exit 1 whatever the cause (CUDA error, NCCL
#        timeout, OOM in a worker, a full disk); retried, and the trainer resumes from its last checkpoint
#   128+N  killed by signal N (OOM killer): retried, counted as a crash
# The Training Operator treats 1-127 as permanent and 128-255 as retryable; the chart's
# TrainingRuntime restates that rule as a podFailurePolicy.
# With R1V_MAX_RESTARTS set (ExitCode: the Training Operator's runPolicy.backoffLimit counts container
# restarts under OnFailure/Always only, and ExitCode recreates pods instead; the chart's
# TrainingRuntime gives every retryable exit a new pod and leaves the count to this), this pod
# gives up with exit 2 once it has crashed more than R1V_MAX_RESTARTS times without a new checkpoint
# in R1V_OUTPUT_DIR. Preempted starts are not counted, a new checkpoint starts the count again, and
# the count is kept per install (R1V_INSTALL_ID) and pod, so installing the run again starts afresh.
PERMANENT=2
DATA_TIMEOUT=3
PREEMPTED=143
CRASHED=200

say() { echo "r1v launch: $*" >&2; }

# A code below 128 from a step that should not fail that way is a crash; 128+ is a kill.
retryable() { if [ "$1" -ge 128 ]; then echo "$1"; else echo "$CRASHED"; fi; }

# PID 1 here is sh, which ignores SIGTERM unless trapped, and runs a trap only between commands:
# every long step runs in the background and is waited for, so the pod stops at once.
child=
stopping=
on_term() {
  stopping=1
  [ -n "$child" ] && kill -TERM "$child" 2>/dev/null
}
trap on_term TERM INT

# Runs "$@" in the background and waits until it has exited; its code in $rc.
run_waited() {
  "$@" &
  child=$!
  wait "$child"
  rc=$?
  # A trapped signal ends `wait` early: wait until the child itself has exited.
  while kill -0 "$child" 2>/dev/null; do
    wait "$child"
    rc=$?
  done
  child=
}

# Called on every exit that means "stopped on SIGTERM".
preempted() {
  refund
  say "$1; exit $PREEMPTED (preempted: retried, not counted as a crash)"
  exit "$PREEMPTED"
}
refund() { :; }

if [ -n "${R1V_DATA_MARKER:-}" ]; then
  started=$(date +%s)
  timeout=${R1V_DATA_WAIT_TIMEOUT:-86400}
  until [ -f "$R1V_DATA_MARKER" ]; do
    if [ $(( $(date +%s) - started )) -ge "$timeout" ]; then
      say "no $R1V_DATA_MARKER after ${timeout} s (dataPrep.waitTimeoutSeconds): the data-prep Job failed or is stuck; see kubectl logs job/<release>-data-prep, fix it, and install the run again. exit $DATA_TIMEOUT (permanent: this job gives its GPUs back)"
      exit "$DATA_TIMEOUT"
    fi
    say "waiting for $R1V_DATA_MARKER (the data-prep Job writes it when the volume is filled)"
    run_waited sleep "${R1V_WAIT_SECONDS:-15}"
    [ -n "$stopping" ] && preempted "SIGTERM while waiting for data prep"
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
  # "<newest checkpoint step> <starts at it that did not end preempted>", per install and pod.
  # A PyTorchJob pod keeps its name when recreated; a TrainJob's pods are keyed by node rank.
  starts="$R1V_OUTPUT_DIR/.r1v-starts/${R1V_INSTALL_ID:-default}/${R1V_POD_NAME:-node-${PET_NODE_RANK:-${JOB_COMPLETION_INDEX:-0}}}"
  mkdir -p "${starts%/*}"
  read -r seen count < "$starts" 2>/dev/null || { seen=; count=0; }
  [ "$seen" = "$newest" ] || count=0
  count=$((count + 1))
  if [ "$count" -gt $((R1V_MAX_RESTARTS + 1)) ]; then
    say "crashed $((count - 1)) times at checkpoint step $newest with no newer checkpoint (runPolicy.backoffLimit $R1V_MAX_RESTARTS): not retrying; the crash is in the earlier pods' logs. Delete $starts, or install the run again, to allow more tries"
    exit "$PERMANENT"
  fi
  # Counted as a crash until it ends otherwise: a pod killed outright (SIGKILL) cannot say.
  echo "$newest $count" > "$starts"
  refund() { echo "$newest $((count - 1))" > "$starts"; }
fi

if [ "${R1V_PREFLIGHT:-1}" = "1" ]; then
  # Every input check of the trainer without loading the model: seconds, on one process.
  run_waited python "$@" --preflight_only true
  [ -n "$stopping" ] && preempted "SIGTERM during the preflight"
  if [ "$rc" -eq "$PERMANENT" ]; then
    say "preflight: bad recipe or arguments (above); not retrying"
    exit "$PERMANENT"
  elif [ "$rc" -ne 0 ]; then
    say "preflight exited $rc; treating it as a crash"
    exit "$(retryable "$rc")"
  fi
fi

[ -n "$stopping" ] && preempted "SIGTERM before training started"

# The trainer creates this file when it stops on SIGTERM (r1v_job.preemption): under torchrun its
# exit code is lost (torchrun exits 1 for any failed worker), and on a multi-node run only one
# node may have been signalled while every node's trainer stops at the same step.
R1V_PREEMPTED_FILE=$(mktemp "${TMPDIR:-/tmp}/r1v-preempted.XXXXXX") && rm -f "$R1V_PREEMPTED_FILE"
export R1V_PREEMPTED_FILE
# Likewise for a permanent error a worker raised after the preflight (bad input found late, another
# writer holding or taking the output_dir's lease): its exit 2 becomes torchrun's 1.
R1V_PERMANENT_FILE=$(mktemp "${TMPDIR:-/tmp}/r1v-permanent.XXXXXX") && rm -f "$R1V_PERMANENT_FILE"
export R1V_PERMANENT_FILE
# torchrun gives its workers TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds after forwarding SIGTERM, then
# SIGKILLs them: the trainer's grace (R1V_GRACE_SECONDS) must fit in it.
if [ -n "${R1V_GRACE_SECONDS:-}" ] && [ -z "${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-}" ]; then
  export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${R1V_GRACE_SECONDS%.*}"
fi
# torchrun in the background so that the pod's SIGTERM reaches it (it forwards it to the workers).
run_waited torchrun "$@"
if [ "$rc" -ne 0 ] && [ -e "$R1V_PERMANENT_FILE" ]; then
  rm -f "$R1V_PERMANENT_FILE" "$R1V_PREEMPTED_FILE"
  say "the trainer refused its input (above); not retrying"
  exit "$PERMANENT"
fi
rm -f "$R1V_PERMANENT_FILE"
if [ "$rc" -ne 0 ] && { [ -n "$stopping" ] || [ -e "$R1V_PREEMPTED_FILE" ]; }; then
  rm -f "$R1V_PREEMPTED_FILE"
  preempted "torchrun exited $rc after SIGTERM: the trainer stopped at a step boundary (its log above says whether it saved a checkpoint)"
fi
rm -f "$R1V_PREEMPTED_FILE"
case "$rc" in
  0) exit 0 ;;
  "$PERMANENT") say "torchrun rejected its arguments; not retrying"; exit "$PERMANENT" ;;
  *) say "torchrun exited $rc: a worker failed (its log is above)"; exit "$(retryable "$rc")" ;;
esac
