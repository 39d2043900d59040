"""r1v_common.jobs.wait_for_job on its own, fed job dicts (the evaluator's and r1v_submit's use of it
against kmock's fake API server is in tests/eval/test_wait.py and tests/submit/test_submit.py)."""

from __future__ import annotations

import pytest

from r1v_common.jobs import JOB_KINDS, JobFailed, JobTimeout, job_kind, wait_for_job

PYTORCHJOB, TRAINJOB = JOB_KINDS["PyTorchJob"], JOB_KINDS["TrainJob"]


def job(*conditions: tuple[str, str]) -> dict:
    return {"status": {"conditions": [{"type": t, "status": s, "reason": f"R{t}", "message": f"m{t}"}
                                      for t, s in conditions]}}


def reads(*answers):
    """read() giving each answer in turn (an exception is raised), the last one for ever."""
    answers = list(answers)

    def read():
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return read


def test_returns_the_job_once_its_kinds_success_condition_is_true():
    done = job(("Created", "True"), ("Complete", "True"))
    assert wait_for_job(reads(job(("Created", "True")), job(("Complete", "False")), done), TRAINJOB, "j", "ns",
                        timeout=10, poll=0) is done
    # Complete means nothing to a PyTorchJob: it is still running when the time is up.
    with pytest.raises(JobTimeout, match="PyTorchJob ns/j did not finish within 0 s"):
        wait_for_job(reads(done), PYTORCHJOB, "j", "ns", timeout=0, poll=0)


def test_a_failed_job_raises_with_its_reason_and_message():
    with pytest.raises(JobFailed, match="training job ns/j failed: RFailed: mFailed") as failed:
        wait_for_job(reads(job(("Running", "True")), job(("Failed", "True"))), PYTORCHJOB, "j", "ns", timeout=10,
                     poll=0)
    assert failed.value.reason == "RFailed"


def test_errors_are_retried_only_when_retry_names_them():
    class Blip(Exception):
        pass

    answers = (Blip("connection refused"), job(("Succeeded", "True")))
    retry = lambda e: f"not readable: {e}" if isinstance(e, Blip) else None  # noqa: E731
    assert wait_for_job(reads(*answers), PYTORCHJOB, "j", "ns", timeout=10, poll=0, retry=retry)
    with pytest.raises(Blip):
        wait_for_job(reads(*answers), PYTORCHJOB, "j", "ns", timeout=10, poll=0)
    with pytest.raises(JobTimeout, match=r"did not finish within 0 s \(not readable: connection refused\)"):
        wait_for_job(reads(Blip("connection refused")), PYTORCHJOB, "j", "ns", timeout=0, poll=0, retry=retry)


def test_the_callback_sees_each_running_job_and_a_busy_callback_skips_the_sleep(monkeypatch):
    slept, seen = [], []
    monkeypatch.setattr("r1v_common.jobs.time.sleep", slept.append)
    running = job(("Running", "True"))
    wait_for_job(reads(running, running, running, job(("Succeeded", "True"))), PYTORCHJOB, "j", "ns", timeout=10,
                 poll=7, callback=lambda j: seen.append(j) or len(seen) == 1)
    assert seen == [running] * 3 and slept == [7, 7]


def test_kinds_are_found_in_any_case_and_others_refused():
    assert job_kind("pytorchjob") is PYTORCHJOB and job_kind("TrainJob") is TRAINJOB
    with pytest.raises(KeyError, match="mpijob: not a training job kind"):
        job_kind("mpijob")
