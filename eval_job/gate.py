"""`python -m eval_job.gate`: start the GPU evaluation only once training has succeeded.

The chart renders the evaluation Job suspended (`spec.suspend: true`), so it holds no GPU while
training is queued or runs. This CPU-only gate waits for the training job (PyTorchJob or TrainJob,
as `python -m eval_job --wait-for KIND/NAME` does) and then resumes the evaluation Job with one
JSON patch:

- without Kueue: `spec.suspend` becomes false and the Job controller creates the pod at once;
- with Kueue (`--queue-name`): the Job gets its `kueue.x-k8s.io/queue-name` label and stays suspended;
  Kueue then admits it (unsuspends it) when the queue has quota, so the evaluation's GPU is accounted
  for like the training's. Kueue admits a suspended Job that carries the label at once, which is why
  the label is added here rather than rendered; its webhook allows setting the queue name while the
  Job is suspended (and keeps the priority-class label immutable, so the chart renders that one).

Exit codes, as the evaluator's: 0 resumed; 1 the API refused (RBAC) or the Job to resume is missing;
2 bad arguments or no API access; 3 training failed (its failure pushed to the Pushgateway like the
evaluator's); 4 timed out waiting for training; 143 stopped by SIGTERM (a drained node): a new pod waits again.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from eval_job import cli
from eval_job.wait import WaitConfigError, kube_api_client, parse_wait_for

logger = logging.getLogger("eval_job.gate")  # run as `python -m eval_job.gate`: __name__ is "__main__" there

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="eval_job.gate", description="Wait for the training job to succeed, "
                                "then resume the suspended evaluation Job.")
    p.add_argument("--wait-for", required=True, metavar="pytorchjob/NAME|trainjob/NAME", help="the training job")
    p.add_argument("--resume", required=True, metavar="JOB", help="the suspended batch/v1 Job to start")
    p.add_argument("--queue-name", help="Kueue LocalQueue: label the Job with it instead of unsuspending it")
    p.add_argument("--namespace", help="namespace of both jobs (default: the pod's)")
    p.add_argument("--kubeconfig", help="kubeconfig (default: the pod's service account, else $KUBECONFIG)")
    p.add_argument("--timeout", type=float, default=30 * 86400.0,
                   help="seconds to wait for training, queue time included (default: 30 days)")
    p.add_argument("--poll-interval", type=float, default=30.0, help="seconds between checks while waiting")
    p.add_argument("--pushgateway", metavar="URL", help="where to push a training failure (default: nowhere)")
    p.add_argument("--run", help="`run` grouping label of a pushed failure (default: the training job's name)")
    p.add_argument("--push-attempts", type=int, default=5)
    p.add_argument("--push-backoff", type=float, default=2.0)
    args = p.parse_args(argv)
    try:
        args.wait = parse_wait_for(args.wait_for)
    except ValueError as e:
        p.error(str(e))
    if args.wait[0] == "marker":
        p.error("--wait-for marker: the gate waits for a training job (pytorchjob/NAME or trainjob/NAME)")
    # What cli._wait reads besides these.
    args.checkpoints = None
    return args


def resume_patch(queue_name: str | None) -> list[dict]:
    """The JSON patch that starts the suspended evaluation Job."""
    if queue_name:
        return [{"op": "add", "path": "/metadata/labels/" + QUEUE_LABEL.replace("/", "~1"), "value": queue_name}]
    return [{"op": "replace", "path": "/spec/suspend", "value": False}]


def resume(name: str, namespace: str, queue_name: str | None, api_client, attempts: int = 5,
           backoff: float = 2.0) -> None:
    """Patch Job NAMESPACE/NAME so that it starts; retries connection errors and 5xx answers."""
    import urllib3
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    batch = client.BatchV1Api(api_client)
    for attempt in range(1, attempts + 1):
        try:
            batch.patch_namespaced_job(name, namespace, resume_patch(queue_name), _request_timeout=30)
            return
        except ApiException as e:
            if e.status is not None and e.status < 500:
                raise RuntimeError(f"cannot resume Job {namespace}/{name}: ({e.status}) {e.reason}") from e
            last: Exception = e
        except urllib3.exceptions.HTTPError as e:
            last = e
        if attempt < attempts:
            logger.warning("resuming Job %s/%s failed (attempt %d/%d): %s", namespace, name, attempt, attempts, last)
            time.sleep(backoff * 2 ** (attempt - 1))
    raise RuntimeError(f"cannot resume Job {namespace}/{name} after {attempts} attempts: {last}")


def run(args: argparse.Namespace) -> int:
    kind, job = args.wait
    try:
        api_client = kube_api_client(kind, job, args.kubeconfig)
    except WaitConfigError as e:
        logger.error("%s", e)
        return cli.EXIT_USAGE
    from kubeflow.training.utils.utils import get_default_target_namespace

    args.namespace = args.namespace or get_default_target_namespace()
    code = cli._wait(args, None, args.run or job)
    if code != cli.EXIT_OK:
        return code
    try:
        resume(args.resume, args.namespace, args.queue_name, api_client, backoff=args.push_backoff)
    except RuntimeError as e:
        logger.error("%s", e)
        return cli.EXIT_INPUT
    how = f"labelled for Kueue LocalQueue {args.queue_name}" if args.queue_name else "resumed"
    logger.info("%s/%s succeeded: evaluation Job %s/%s %s", kind, job, args.namespace, args.resume, how)
    return cli.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        with cli.sigterm_raises():  # as PID 1 it would otherwise wait out the grace period
            return run(args)
    except cli.Terminated:
        logger.error("stopped by SIGTERM while waiting for %s: nothing was changed; exit %d", args.wait_for,
                  cli.EXIT_TERMINATED)
        return cli.EXIT_TERMINATED


if __name__ == "__main__":
    sys.exit(main())
