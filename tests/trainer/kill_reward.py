"""A reward by import path (`tests.trainer.kill_reward:die_at_call`) that kills its process, as an
OOM kill or a node loss would, at the N-th reward call (= optimizer step N with the smoke recipe)
when R1V_TEST_DIE_AT_CALL=N. It adds 0 to every reward, so runs with and without it are the same."""

import os

_calls = 0


def die_at_call(completions, **kwargs):
    global _calls
    _calls += 1
    if os.environ.get("R1V_TEST_DIE_AT_CALL") == str(_calls):
        os._exit(137)  # no cleanup, no except clause, no atexit: as SIGKILL leaves a process
    return [0.0] * len(completions)
