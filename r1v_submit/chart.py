"""Values and rendering, as `helm install` does them: Helm's --set grammar, values merging, schema
validation and template engine (helm-python-sdk wraps Helm's Go SDK). Nothing here restates the chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

# The chart ships as package data: a link to charts/r1v in a checkout, a copy in the wheel and the image.
CHART = Path(__file__).resolve().parent / "chart"


class SubmitError(Exception):
    """Bad input, said in one line."""


def merge(base: dict, override: dict) -> dict:
    """Helm's merging of -f files (its mergeMaps): maps merge key by key, anything else is replaced;
    null stays, so that rendering deletes the chart's default (Helm's coalescing)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


# Helm parses every --set-json, --set and --set-string into the one map the -f files made, in that
# order (strvals.ParseJSON/ParseInto/ParseIntoString on the same map): a later expression updates a
# list index or a nested key of what came before instead of replacing it. helm-python-sdk exposes
# each parser on a fresh map only, so the map so far is written in front of the expression, in the
# same grammar, as one assignment per leaf whose value is a unique placeholder string; Helm's own
# parser then reads the whole line into one map, and the placeholders get their values back. An
# empty map is written as a map holding one marker key (dropped afterwards), so that a later
# `--set a.b=1` still finds a map there; an empty list is a leaf (`--set a[0]=x` onto an empty list
# from -f is then refused as Helm refuses a string there, never merged wrongly).
_SPECIAL = set("\\.[]=,{}")
_MARK = object()


def _key(k: str) -> str:
    return "".join("\\" + c if c in _SPECIAL else c for c in str(k))


def _prefix(tree, json_values: bool, placeholders: dict, path: str = "") -> list[str]:
    def leaf(where: str, value) -> str:
        token = f"r1vplaceholder{len(placeholders)}x{id(placeholders)}"
        placeholders[token] = value
        return f"{where}={json.dumps(token) if json_values else token}"

    if isinstance(tree, dict) and not tree:
        return [leaf(f"{path}.{_key(_marker(placeholders))}", _MARK)]
    out = []
    for k, v in (tree.items() if isinstance(tree, dict) else enumerate(tree)):
        sub = f"{path}[{k}]" if isinstance(tree, list) else (f"{path}.{_key(k)}" if path else _key(k))
        out += _prefix(v, json_values, placeholders, sub) if isinstance(v, dict) or (isinstance(v, list) and v) \
            else [leaf(sub, v)]
    return out


def _marker(placeholders: dict) -> str:
    return f"r1vmarker{id(placeholders)}"


def _restore(node, placeholders: dict):
    if isinstance(node, str) and node in placeholders:
        return placeholders[node]
    if isinstance(node, list):
        return [_restore(v, placeholders) for v in node]
    if isinstance(node, dict):
        return {k: _restore(v, placeholders) for k, v in node.items() if k != _marker(placeholders)}
    return node


def parse_into(values: dict, expression: str, parse, json_values: bool) -> dict:
    """Helm's strvals.ParseInto(expression, values) with the SDK's parser `parse` (a new map)."""
    placeholders: dict = {}
    prefix = _prefix(values, json_values, placeholders) if values else []
    return _restore(parse(",".join(prefix + [expression])), placeholders)


def user_values(files: list[Path] = (), sets: list[str] = (), set_strings: list[str] = (),
                set_jsons: list[str] = ()) -> dict:
    """The values a `helm install -f ... --set-json ... --set ... --set-string ...` passes: each -f
    file read by Helm's own values reader and merged in order, then every --set-json, --set and
    --set-string expression parsed by Helm's own strvals parser into that one map, in Helm's order."""
    values: dict[str, Any] = {}
    for f in files:
        try:
            loaded = helm.values_from_yaml(Path(f).read_text())
        except OSError as e:
            raise SubmitError(f"-f {f}: {e.strerror or e}") from e
        except helm.HelmError as e:
            raise SubmitError(f"-f {f}: {' '.join(str(e).split())}") from e
        values = merge(values, loaded or {})
    for flag, parse, json_values, expressions in (
            ("--set-json", helm.parse_set_json, True, set_jsons),
            ("--set", helm.parse_set_string, False, sets),
            ("--set-string", helm.parse_set_string_values, False, set_strings)):
        for expr in expressions:
            try:
                values = parse_into(values, expr, parse, json_values)
            except helm.HelmError as e:
                raise SubmitError(f"{flag} {expr}: {' '.join(str(e).split())}") from e
    return values


def helm_render(loaded: helm.Chart, values: dict, *, release: str, namespace: str,
                api_versions: list[str] = (), kube_version: str | None = None) -> dict[str, str]:
    """Template path -> manifest, as `helm install` renders them against a cluster that serves
    api_versions (its discovery, "group/version") and runs kube_version (the chart's .Capabilities
    checks read them).
    Raises Helm's own errors (HelmValuesError names the key the schema rejects)."""
    opts = {"name": release, "namespace": namespace, "is_install": True, "api_versions": list(api_versions)}
    if kube_version:  # .Capabilities.KubeVersion; Helm's default (its client library's) otherwise
        opts["kube_version"] = kube_version
    # helm-python-sdk 0.2.2's Chart.render does not pass api_versions on; its native helm_render
    # takes them in the same options object (Helm's chartutil capabilities).
    from helm_python import _native

    return json.loads(_native.call_string("helm_render", loaded._raw(), json.dumps(values), json.dumps(opts)))


def render(values: dict, *, release: str, namespace: str, chart: Path = CHART,
           api_versions: list[str] = (), kube_version: str | None = None) -> dict[str, str]:
    """helm_render of the chart directory, with every refusal as one SubmitError line."""
    try:
        helm.validate_release_name(release)
    except helm.HelmError as e:
        raise SubmitError(f"--release {release!r}: {e}") from e
    try:
        with helm.Chart.load(str(chart)) as loaded:
            return helm_render(loaded, values, release=release, namespace=namespace, api_versions=api_versions,
                               kube_version=kube_version)
    except (helm.HelmValuesError, helm.HelmRenderError) as e:
        raise SubmitError(" ".join(str(e).split())) from e
    except helm.HelmError as e:
        raise SubmitError(f"chart {chart}: {e}") from e


def objects(rendered: dict[str, str], *, hooks: bool = False) -> list[dict]:
    """The rendered objects in template order; Helm hooks (the `helm test` Pod) only with hooks=True."""
    found = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc and (hooks or "helm.sh/hook" not in ((doc.get("metadata") or {}).get("annotations") or {})):
                found.append(doc)
    return found


def notes(rendered: dict[str, str]) -> str:
    return next((text for path, text in rendered.items() if path.endswith("NOTES.txt")), "")
