"""Rendering and validation helpers for the r1v chart tests (imported by the test modules).

Rendering goes through helm-python-sdk (Helm's own Go SDK), so what is checked here is what
`helm install` would send. Validation has three layers:
  * built-in kinds: the kubernetes-validate CLI in strict mode (unknown fields are errors, and a
    kind it has no schema for prints WARN, which also fails);
  * custom resources: the CRD's openAPIV3Schema (tests/outside.py: from ../shared/crds, else fetched
    from the pinned upstream release, else the test skips), plus a walk that rejects every field the
    schema does not declare (the API server would silently prune them);
  * the Training Operator's admission webhook rules for PyTorchJob, restated from v1.9, and the
    TrainJob name rules of Trainer v2.3 (its CRD's CEL rules, which jsonschema does not run).
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import helm_python as helm
import jsonschema
import yaml

from r1v_submit.chart import helm_render
from tests.outside import require

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "r1v"
RELEASE = "r1v"
NAMESPACE = "r1v"
# Custom kinds the chart renders -> the tests/outside.py fixture holding their CRD.
CUSTOM_KINDS = {("kubeflow.org/v1", "PyTorchJob"): "pytorchjob-crd",
                ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitors-crd",
                ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitors-crd",
                ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrules-crd",
                ("trainer.kubeflow.org/v1alpha1", "TrainJob"): "trainjobs-crd",
                ("trainer.kubeflow.org/v1alpha1", "TrainingRuntime"): "trainingruntimes-crd",
                ("trainer.kubeflow.org/v1alpha1", "ClusterTrainingRuntime"): "clustertrainingruntimes-crd"}
# Every API group the chart can render objects of, as a cluster with all the operators installed serves them.
ALL_APIS = ["kubeflow.org/v1", "trainer.kubeflow.org/v1alpha1", "monitoring.coreos.com/v1"]


@functools.lru_cache(maxsize=1)
def chart() -> helm.Chart:
    return helm.Chart.load(str(CHART))


def ci_value_sets() -> dict[str, dict]:
    return {p.name.removesuffix("-values.yaml"): yaml.safe_load(p.read_text()) or {}
            for p in sorted((CHART / "ci").glob("*-values.yaml"))}


def render_raw(values: dict | None = None, name: str = RELEASE, namespace: str = NAMESPACE,
               api_versions: list[str] | None = None) -> dict[str, str]:
    """Helm's rendering, as `helm install` against a cluster serving api_versions (default: all of
    ALL_APIS; [] = a bare cluster) would produce it."""
    return helm_render(chart(), values or {}, release=name, namespace=namespace,
                       api_versions=ALL_APIS if api_versions is None else api_versions)


def render(values: dict | None = None, name: str = RELEASE, namespace: str = NAMESPACE,
           api_versions: list[str] | None = None) -> list[dict]:
    """Every object the chart renders (helm test hooks included), NOTES.txt excluded."""
    objects = []
    for path, text in sorted(render_raw(values, name, namespace, api_versions).items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def notes(values: dict | None = None, name: str = RELEASE, namespace: str = NAMESPACE,
          api_versions: list[str] | None = None) -> str:
    rendered = render_raw(values, name, namespace, api_versions)
    return next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))


def only(objects: list[dict], kind: str, name_suffix: str = "") -> dict:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind} *{name_suffix}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def kinds(objects: list[dict]) -> list[str]:
    return sorted(o["kind"] for o in objects)


# --- built-in kinds -------------------------------------------------------------------------------

def kubernetes_validate(objects: list[dict], versions=("1.29.0", None)) -> tuple[int, str]:
    """Run the kubernetes-validate CLI (strict) over objects; returns (exit code, output)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump_all(objects, f)
    cmd = [str(Path(sys.executable).with_name("kubernetes-validate")), "--strict", "--quiet"]
    for v in versions:
        if v:
            cmd += ["-k", v]
    if None in versions:
        import kubernetes_validate.utils as kv
        cmd += ["-k", kv.latest_version()]
    proc = subprocess.run(cmd + [f.name], capture_output=True, text=True)
    Path(f.name).unlink()
    return proc.returncode, proc.stdout + proc.stderr


def kubernetes_validate_problems(objects: list[dict]) -> list[str]:
    rc, out = kubernetes_validate(objects)
    problems = [line for line in out.splitlines() if line.startswith(("WARN", "ERROR", "FATAL"))]
    if rc != 0 and not problems:
        problems.append(f"kubernetes-validate exited {rc}: {out}")
    return problems


# --- custom resources -----------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _crd_schema(api_version: str, kind: str) -> dict:
    group, version = api_version.split("/")
    path = require(CUSTOM_KINDS[(api_version, kind)])
    for crd in yaml.safe_load_all(path.read_text()):
        if crd and crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind:
            for v in crd["spec"]["versions"]:
                if v["name"] == version:
                    return v["schema"]["openAPIV3Schema"]
    raise LookupError(f"{path} has no CRD for {api_version} {kind}")


def crd_schema(api_version: str, kind: str) -> dict:
    """The CRD's openAPIV3Schema; skips the calling test when the CRD is not available."""
    return _crd_schema(api_version, kind)


def _openapi_to_jsonschema(node):
    """OpenAPI v3 structural schema -> JSON Schema: only int-or-string needs translating."""
    if isinstance(node, dict):
        out = {k: _openapi_to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
        if node.get("x-kubernetes-int-or-string"):
            out.pop("type", None)
            out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
        return out
    if isinstance(node, list):
        return [_openapi_to_jsonschema(v) for v in node]
    return node


def undeclared_fields(obj, schema: dict, path: str = "") -> list[str]:
    """Paths of fields the schema does not declare (the API server would prune them)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found = []
    if isinstance(obj, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, value in obj.items():
            if props is not None and key in props:
                found += undeclared_fields(value, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                found += undeclared_fields(value, extra, f"{path}.{key}")
            elif extra is True:
                continue
            else:
                found.append(f"{path}.{key}")
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(obj):
            found += undeclared_fields(item, schema["items"], f"{path}[{i}]")
    return found


_META_KEYS = {"name", "namespace", "labels", "annotations"}
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def metadata_problems(meta: dict) -> list[str]:
    """The CRD schemas leave the top-level metadata open; the API server checks it as ObjectMeta."""
    problems = [f"metadata.{k}: not set by charts" for k in meta if k not in _META_KEYS]
    for k, v in (meta.get("labels") or {}).items():
        if not (_LABEL_KEY.match(k) and isinstance(v, str) and len(v) <= 63 and _LABEL_VALUE.match(v)):
            problems.append(f"metadata.labels[{k!r}]={v!r}: not a valid label")
    for k, v in (meta.get("annotations") or {}).items():
        if not isinstance(v, str):
            problems.append(f"metadata.annotations[{k!r}]: value must be a string")
    return problems


def crd_problems(obj: dict) -> list[str]:
    schema = crd_schema(obj["apiVersion"], obj["kind"])
    validator = jsonschema.Draft4Validator(_openapi_to_jsonschema(schema))
    problems = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
    problems += [f"{p}: not in the CRD schema" for p in undeclared_fields(obj, schema)
                 if not p.startswith(".metadata.")]
    problems += metadata_problems(obj.get("metadata", {}))
    return problems


# --- the Training Operator's admission rules (pkg/webhooks/pytorch, v1.9) ------------------------

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def admission_problems(job: dict) -> list[str]:
    problems = []
    name = job["metadata"].get("name", "")
    if not (_DNS1035.match(name) and len(name) <= 63):
        problems.append(f"metadata.name {name!r}: not a DNS-1035 label")
    specs = job["spec"].get("pytorchReplicaSpecs")
    if not specs:
        return problems + ["spec.pytorchReplicaSpecs: required"]
    for rtype, rspec in specs.items():
        where = f"spec.pytorchReplicaSpecs[{rtype}]"
        if rtype not in ("Master", "Worker"):
            problems.append(f"{where}: replica type must be Master or Worker")
        containers = (rspec or {}).get("template", {}).get("spec", {}).get("containers") or []
        if not containers:
            problems.append(f"{where}.template.spec.containers: must be specified")
        if any(not c.get("image") for c in containers):
            problems.append(f"{where}: every container needs an image")
        if not any(c.get("name") == "pytorch" for c in containers):
            problems.append(f"{where}: must have a container named pytorch")
        replicas = (rspec or {}).get("replicas")
        if rtype == "Master" and replicas != 1:
            problems.append(f"{where}.replicas: must be 1")
        if rtype == "Worker" and replicas is not None and replicas < 1:
            problems.append(f"{where}.replicas: must be at least 1")
    elastic = job["spec"].get("elasticPolicy")
    if elastic and elastic.get("nProcPerNode") is not None and job["spec"].get("nprocPerNode") is not None:
        problems.append("spec.elasticPolicy.nProcPerNode: must not be used with spec.nprocPerNode")
    return problems


def builtin_problems(objects: list[dict]) -> list[str]:
    """The built-in kinds' problems (kubernetes-validate): needs nothing from outside the repository."""
    builtin = [o for o in objects if (o["apiVersion"], o["kind"]) not in CUSTOM_KINDS]
    return kubernetes_validate_problems(builtin) if builtin else []


def custom_problems(objects: list[dict]) -> list[str]:
    """The custom resources' problems: their CRDs (skips the test when a CRD is not available) and
    the operators' admission rules."""
    problems = []
    for o in objects:
        if (o["apiVersion"], o["kind"]) in CUSTOM_KINDS:
            problems += [f"{o['kind']}/{o['metadata']['name']} {p}" for p in crd_problems(o)]
        if o["kind"] == "PyTorchJob":
            problems += [f"PyTorchJob/{o['metadata']['name']} {p}" for p in admission_problems(o)]
        if o["kind"] == "TrainJob":
            problems += [f"TrainJob/{o['metadata']['name']} {p}" for p in trainjob_problems(o)]
    return problems


def validation_problems(objects: list[dict]) -> list[str]:
    """Everything wrong with a rendered release, by the three layers above."""
    return builtin_problems(objects) + custom_problems(objects)


def trainjob_problems(job: dict) -> list[str]:
    """Trainer v2.3's CEL rules on TrainJob that matter here (jsonschema does not evaluate CEL)."""
    name = job["metadata"].get("name", "")
    problems = [] if _DNS1035.match(name) and len(name) <= 63 else [f"metadata.name {name!r}: not a DNS-1035 label"]
    ref = job["spec"].get("runtimeRef", {})
    if ref.get("kind") not in ("TrainingRuntime", "ClusterTrainingRuntime") or not ref.get("name"):
        problems.append(f"spec.runtimeRef {ref}: needs a kind of TrainingRuntime or ClusterTrainingRuntime and a name")
    return problems


# --- PyTorchJob views ------------------------------------------------------------------------------

def replica_pods(job: dict) -> dict[str, dict]:
    return {rtype: spec["template"]["spec"] for rtype, spec in job["spec"]["pytorchReplicaSpecs"].items()}


def container(pod_spec: dict, name: str) -> dict:
    return next(c for c in pod_spec["containers"] if c["name"] == name)


def claim_of(pod_spec: dict) -> str:
    mount = next(m for c in pod_spec["containers"] for m in c.get("volumeMounts", []) if m["mountPath"] == "/data")
    volume = next(v for v in pod_spec["volumes"] if v["name"] == mount["name"])
    return volume["persistentVolumeClaim"]["claimName"]
