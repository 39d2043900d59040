"""A reward by import path (`tests.trainer.kill_reward:die_at_call`) that stops its run at the N-th
reward call (= optimizer step N with the smoke recipe, in the middle of that step):
R1V_TEST_DIE_AT_CALL=N kills the process as an OOM kill or a node loss would;
R1V_TEST_TERM_AT_CALL=N sends SIGTERM, as the kubelet does on a preemption or drain, to the pid in
the file R1V_TEST_TERM_PIDFILE (the launcher) or else to this process, from rank 0 only, then
waits R1V_TEST_TERM_WAIT seconds for it to reach every rank; R1V_TEST_FILL_AT_CALL=N fills the
filesystem of the folder R1V_TEST_FILL_DIR up to R1V_TEST_FILL_LEAVE free bytes. It adds 0 to every reward, so runs
with and without it are the same."""

import os
import signal
import time
from pathlib import Path

_calls = 0
term_sent_at = None  # time.monotonic() of the SIGTERM sent, for in-process tests


def die_at_call(completions, **kwargs):
    global _calls, term_sent_at
    _calls += 1
    if os.environ.get("R1V_TEST_DIE_AT_CALL") == str(_calls):
        os._exit(137)  # no cleanup, no except clause, no atexit: as SIGKILL leaves a process
    if os.environ.get("R1V_TEST_TERM_AT_CALL") == str(_calls) and os.environ.get("RANK", "0") == "0":
        pidfile = os.environ.get("R1V_TEST_TERM_PIDFILE")
        term_sent_at = time.monotonic()
        if pidfile:  # when, for a test in another process
            Path(pidfile + ".sent").write_text(repr(time.time()))
        os.kill(int(Path(pidfile).read_text()) if pidfile else os.getpid(), signal.SIGTERM)
        time.sleep(float(os.environ.get("R1V_TEST_TERM_WAIT", "0")))
    if os.environ.get("R1V_TEST_FILL_AT_CALL") == str(_calls):
        folder = Path(os.environ["R1V_TEST_FILL_DIR"])
        st = os.statvfs(folder)
        leave = int(os.environ.get("R1V_TEST_FILL_LEAVE", "0"))
        (folder / "filler").write_bytes(b"\0" * max(st.f_bavail * st.f_frsize - leave, 0))
    return [0.0] * len(completions)
