"""Submit a training run from Python, without the helm CLI: the chart's own objects.

    python -m r1v_submit --release exp1 -n r1v --set nodes=2 --set storage.existingClaim=r1v-data
    python -m r1v_submit --release exp2 -n r1v -f my-values.yaml --set jobKind=TrainJob --dry-run

Values work as with `helm install` (it is Helm's code): the chart's values.yaml, each -f file
(Helm's values reader), then every --set-json, --set and --set-string expression parsed by Helm's
strvals parser into that one map, in Helm's order, so `--set a[1]=x` updates a list an -f file or an
earlier flag made; values.schema.json rejects typos and bad types naming the key. The chart is
rendered by Helm's engine against the cluster's API versions, then every object's current state is
read before anything is written: an existing training or evaluation job refuses the submission
and nothing is changed. Every object the chart renders (claim, recipe, scripts, RBAC, Service, the
PyTorchJob or TrainJob, the evaluation Job (suspended) and its gate, the data-prep Job, the re-push
CronJob and NetworkPolicies where enabled, monitors where the cluster serves them;
not the `helm test` hook) is then created in the namespace (an existing claim kept, other existing
objects merge-patched). There is no Helm release: delete the objects by label
app.kubernetes.io/instance=RELEASE. It then follows the rank-0 pod's log and exits 0 when training
succeeds, 1 when it fails, 2 on bad values or arguments, a missing kubeconfig, an unreachable API
server or a refusal (403), each in one line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from r1v_submit import chart
from r1v_submit.chart import SubmitError

MANAGED_BY = "r1v-submit"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m r1v_submit", description=__doc__.splitlines()[0])
    p.add_argument("--release", default="r1v", help="plays Helm's release name (object-name prefix)")
    p.add_argument("--namespace", "-n", default=None, help="default: the kube context's namespace")
    p.add_argument("--chart", type=Path, default=chart.CHART, help="chart directory (default: the packaged charts/r1v)")
    p.add_argument("--values", "-f", type=Path, action="append", default=[])
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--set-string", dest="set_strings", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--set-json", dest="set_jsons", action="append", default=[], metavar="KEY=JSON")
    p.add_argument("--api-versions", action="append", default=[], metavar="GROUP/VERSION",
                   help="with --dry-run: API versions the cluster serves (as `helm template --api-versions`)")
    p.add_argument("--kube-version", default=None, metavar="VERSION",
                   help="with --dry-run: the cluster's Kubernetes version (as `helm template --kube-version`)")
    p.add_argument("--kubeconfig", default=None)
    p.add_argument("--context", default=None)
    p.add_argument("--dry-run", action="store_true", help="print the objects as YAML and submit nothing")
    p.add_argument("--no-follow", action="store_true", help="return after submitting")
    return p.parse_args(argv)


def rendered_objects(a, namespace: str, api_versions: list[str], kube_version: str | None) -> tuple[list[dict], str]:
    values = chart.user_values(a.values, a.sets, a.set_strings, a.set_jsons)
    rendered = chart.render(values, release=a.release, namespace=namespace, chart=a.chart, api_versions=api_versions,
                            kube_version=kube_version)
    objects = chart.objects(rendered)
    for obj in objects:
        # Rendered by Helm's engine, but no Helm release owns them.
        labels = obj["metadata"].setdefault("labels", {})
        if labels.get("app.kubernetes.io/managed-by") == "Helm":
            labels["app.kubernetes.io/managed-by"] = MANAGED_BY
    return objects, chart.notes(rendered)


def connect(kubeconfig: str | None, context: str | None):
    """A kubernetes Configuration: the kubeconfig (or $KUBECONFIG, ~/.kube/config), else in-cluster;
    neither is a SubmitError in one line."""
    from kubernetes import client, config

    try:
        config.load_kube_config(config_file=kubeconfig, context=context)
    except (config.ConfigException, OSError) as e:
        if kubeconfig or context:
            raise SubmitError(f"kubeconfig {kubeconfig or '(default)'}"
                              f"{f' context {context}' if context else ''}: {' '.join(str(e).split())}") from e
        try:
            config.load_incluster_config()
        except config.ConfigException as in_pod:
            raise SubmitError("no kubeconfig (--kubeconfig, $KUBECONFIG or ~/.kube/config) and not in a pod "
                              f"({' '.join(str(in_pod).split())}); point --kubeconfig at the cluster") from in_pod
    return client.Configuration.get_default_copy()


def default_namespace(kubeconfig: str | None, context: str | None) -> str:
    """The kube context's namespace, else the pod's (in a cluster), else "default" (as kubectl)."""
    from kubeflow.training.utils.utils import get_default_target_namespace
    from kubernetes import config

    try:
        contexts, current = config.list_kube_config_contexts(kubeconfig)
        chosen = next((c for c in contexts if c["name"] == context), current) if context else current
        return chosen["context"].get("namespace") or "default"
    except (config.ConfigException, OSError, TypeError, KeyError):
        return get_default_target_namespace()


def main(argv: list[str] | None = None, configuration=None) -> int:
    """configuration: a kubernetes client Configuration (tests); default: connect()."""
    a = parse_args(argv)
    try:
        # In a checkout Helm's loader notes each followed recipe link on stderr; stdout stays YAML.
        if a.dry_run:
            objects, _ = rendered_objects(a, a.namespace or "default", a.api_versions, a.kube_version)
            yaml.safe_dump_all(objects, sys.stdout, sort_keys=False)
            return 0
        from kubeflow.training import TrainingClient
        from kubernetes import client

        from r1v_submit.cluster import Cluster, in_order

        cfg = configuration if configuration is not None else connect(a.kubeconfig, a.context)
        namespace = a.namespace or default_namespace(a.kubeconfig, a.context)
        cluster = Cluster(client.ApiClient(cfg), TrainingClient(client_configuration=cfg, namespace=namespace))
        objects, notes = rendered_objects(a, namespace, cluster.api_versions(), cluster.kube_version())
        job = next(o for o in objects if o["kind"] in ("PyTorchJob", "TrainJob"))
        # All or nothing: values, schema, rendering and every object's current state are checked
        # before the first write.
        exists = cluster.plan(objects, namespace)
        for obj in in_order(objects):
            outcome = cluster.create(obj, namespace, exists[obj["kind"], obj["metadata"]["name"]])
            print(f"{obj['kind']} {obj['metadata'].get('namespace', namespace)}/{obj['metadata']['name']} {outcome}",
                  flush=True)
        kind, name = job["kind"], job["metadata"]["name"]
        print(f"submitted {kind} {namespace}/{name}", flush=True)
        if a.no_follow:
            print(notes)
            return 0
        ok = cluster.follow(kind, name, namespace)
        print(f"{kind} {namespace}/{name} {'succeeded' if ok else 'failed'}", flush=True)
        return 0 if ok else 1
    except SubmitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # the API server refusing or vanishing while following: one line, not a traceback
        from kubernetes.client.rest import ApiException
        from urllib3.exceptions import HTTPError

        if not isinstance(e, (ApiException, HTTPError)):
            raise
        print(f"error: {type(e).__name__}: {' '.join(str(getattr(e, 'reason', None) or e).split())}", file=sys.stderr)
        return 2


def cli() -> None:
    """The r1v-submit console script."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
