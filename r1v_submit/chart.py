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
    """Helm's merging of user values (-f files, then --set): maps merge key by key, anything else
    is replaced; null stays, so that rendering deletes the chart's default (Helm's coalescing)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def user_values(files: list[Path] = (), sets: list[str] = (), set_strings: list[str] = (),
                set_jsons: list[str] = ()) -> dict:
    """The values a `helm install -f ... --set-json ... --set ... --set-string ...` passes, merged in
    Helm's order; each expression is parsed by Helm's own strvals parser."""
    values: dict[str, Any] = {}
    for f in files:
        try:
            loaded = yaml.safe_load(Path(f).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise SubmitError(f"-f {f}: {e}".splitlines()[0]) from e
        if not isinstance(loaded, dict):
            raise SubmitError(f"-f {f}: a values file must hold a map, not {type(loaded).__name__}")
        values = merge(values, loaded)
    for flag, parse, expressions in (("--set-json", helm.parse_set_json, set_jsons),
                                     ("--set", helm.parse_set_string, sets),
                                     ("--set-string", helm.parse_set_string_values, set_strings)):
        for expr in expressions:
            try:
                values = merge(values, parse(expr))
            except helm.HelmError as e:
                raise SubmitError(f"{flag} {expr}: {e}") from e
    return values


def helm_render(loaded: helm.Chart, values: dict, *, release: str, namespace: str,
                api_versions: list[str] = ()) -> dict[str, str]:
    """Template path -> manifest, as `helm install` renders them against a cluster that serves
    api_versions (its discovery, "group/version"; the chart's .Capabilities checks read them).
    Raises Helm's own errors (HelmValuesError names the key the schema rejects)."""
    opts = {"name": release, "namespace": namespace, "is_install": True, "api_versions": list(api_versions)}
    # helm-python-sdk 0.2.2's Chart.render does not pass api_versions on; its native helm_render
    # takes them in the same options object (Helm's chartutil capabilities).
    from helm_python import _native

    return json.loads(_native.call_string("helm_render", loaded._raw(), json.dumps(values), json.dumps(opts)))


def render(values: dict, *, release: str, namespace: str, chart: Path = CHART,
           api_versions: list[str] = ()) -> dict[str, str]:
    """helm_render of the chart directory, with every refusal as one SubmitError line."""
    try:
        helm.validate_release_name(release)
    except helm.HelmError as e:
        raise SubmitError(f"--release {release!r}: {e}") from e
    try:
        with helm.Chart.load(str(chart)) as loaded:
            return helm_render(loaded, values, release=release, namespace=namespace, api_versions=api_versions)
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
