"""values.schema.json and README.md of charts/r1v, generated from the comments of its values.yaml.

values.yaml is the one description of the chart's values (cert-manager's helm-tool is the model):
the comment block right above a key documents it (`# -- text`), and annotation lines in that block
constrain it:

    # @schema {"pattern": "^[a-z]+$"}   a JSON Schema fragment merged over what the default implies
    # @required                         the key must be present in its parent map

A key's schema starts from its default: a string is "type": "string", an integer "integer", a
boolean "boolean"; a map with keys is a closed object ("additionalProperties": false) of its keys'
schemas. A fragment with "$ref", "enum", "additionalProperties" or "propertyNames" describes the
whole value itself (its keys are then examples, not properties), so nothing is inferred for it.
Empty maps, lists and nulls imply nothing and must carry a fragment: the schema stays closed.
Structures of Kubernetes or Prometheus (volumes, tolerations, quantities, durations) live once in
chart_schema_definitions.yaml, referenced as "#/definitions/NAME".

    python tools/chart_schema.py            writes both files (make schema)
    python tools/chart_schema.py --check    exit 1, naming the file, when either is not up to date
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "r1v"
DEFINITIONS = Path(__file__).with_name("chart_schema_definitions.yaml")

KEY = re.compile(r"^( *)([A-Za-z_][A-Za-z0-9_.-]*):(?: |$)")
COMMENT = re.compile(r"^ *#(?: |$)(.*)$")
# What a fragment with one of these keys describes on its own: no type or properties are inferred.
WHOLE = ("$ref", "enum", "additionalProperties", "propertyNames")
INFERRED = {str: "string", bool: "boolean", int: "integer", float: "number"}


class ValuesError(ValueError):
    """values.yaml is not documented or constrained as this tool needs; the message names the key."""


def comment_blocks(text: str) -> dict[tuple[str, ...], list[str]]:
    """The comment lines right above each map key of values.yaml, by key path (keys inside list items
    get paths that no map of values has, so nothing reads them)."""
    blocks: dict[tuple[str, ...], list[str]] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] = []
    for line in text.splitlines():
        if comment := COMMENT.match(line):
            pending.append(comment.group(1))
            continue
        key = KEY.match(line)
        if key is None:
            pending = []  # a blank line or a list item ends the block
            continue
        indent = len(key.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = (*[name for _, name in stack], key.group(2))
        blocks[path] = pending
        stack.append((indent, key.group(2)))
        pending = []
    return blocks


def parse_block(lines: list[str], where: str) -> tuple[str, dict, bool, bool]:
    """(description, schema fragment, required, has a `# --` line) of one comment block."""
    text, fragment, required, marked = [], {}, False, False
    for line in lines:
        if line.startswith("@schema "):
            try:
                fragment.update(json.loads(line[len("@schema "):]))
            except json.JSONDecodeError as e:
                raise ValuesError(f"values.yaml: {where}: @schema is not one line of JSON: {e}") from e
        elif line.strip() == "@required":
            required = True
        elif line.startswith("-- ") or line == "--":
            marked = True
            text.append(line[3:])
        else:
            text.append(line)
    return " ".join(t.strip() for t in text if t.strip()), fragment, required, marked


class Key:
    """One documented key of values.yaml: its path, default, description and schema."""

    def __init__(self, path, default, description, schema, leaf, marked):
        self.path, self.default, self.description = path, default, description
        self.schema, self.leaf, self.marked = schema, leaf, marked

    @property
    def name(self) -> str:
        return ".".join(self.path)


def build(values: dict, blocks: dict, path: tuple[str, ...] = ()) -> tuple[dict, list[Key]]:
    """The closed object schema of the map `values` at `path`, and its keys in file order."""
    properties, required, keys = {}, [], []
    for name, default in values.items():
        here = (*path, name)
        where = ".".join(here)
        description, fragment, is_required, marked = parse_block(blocks.get(here, []), where)
        nested = isinstance(default, dict) and default and not any(k in fragment for k in WHOLE)
        if nested:
            schema, children = build(default, blocks, here)
        else:
            schema, children = {**infer(default, fragment, where)}, []
        schema.update(fragment)
        if description:
            schema["description"] = description
        properties[name] = schema
        if is_required:
            required.append(name)
        keys += [Key(here, default, description, schema, not nested, marked), *children]
    node = {"type": "object", "additionalProperties": False, "properties": properties}
    if required:
        node["required"] = required
    return node, keys


def infer(default, fragment: dict, where: str) -> dict:
    """What the default alone says of a leaf; refuses defaults that say nothing without a fragment."""
    if any(k in fragment for k in WHOLE) or "type" in fragment:
        return {}
    if isinstance(default, list):
        if "items" not in fragment:
            raise ValuesError(f"values.yaml: {where}: a list needs `# @schema {{\"items\": ...}}` (what each item is)")
        return {"type": "array"}
    if default is None or default == {}:
        raise ValuesError(f"values.yaml: {where}: an empty map or null needs a `# @schema` fragment naming its type")
    return {"type": INFERRED[type(default)]}


def generate(values_text: str, definitions: dict) -> tuple[dict, list[Key]]:
    """The chart's values.schema.json (as a dict) and its documented keys."""
    values = yaml.safe_load(values_text)
    root, keys = build(values, comment_blocks(values_text))
    schema = {"$schema": "http://json-schema.org/draft-07/schema#", "title": "r1v chart values", **root}
    used = sorted(set(re.findall(r'"#/definitions/([A-Za-z0-9]+)"', json.dumps([schema, definitions]))))
    missing = [name for name in used if name not in definitions]
    if missing:
        raise ValuesError(f"values.yaml: #/definitions/{missing[0]} is not in {DEFINITIONS.name}")
    schema["definitions"] = {name: definitions[name] for name in definitions if name in used}
    return schema, keys


def schema_text(schema: dict) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def type_of(schema: dict, definitions: dict) -> str:
    """The README's type column: the JSON type (or the choices) and the bounds a value must keep."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"{type_of(definitions[name], definitions)} ({name})"
    if "enum" in schema:
        return " or ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    kind = schema.get("type", "object")
    text = " or ".join(kind) if isinstance(kind, list) else kind
    if "minimum" in schema or "maximum" in schema:
        text += f" {schema.get('minimum', '')}..{schema.get('maximum', '')}"
    if "pattern" in schema:
        text += f" matching `{schema['pattern']}`"
    return text


def cell(text: str) -> str:
    """Markdown table cell text: a `|` would end the cell, a `<` start an HTML tag."""
    return text.replace("|", "\\|").replace("<", "&lt;")


def row(key: Key, definitions: dict) -> str:
    default = json.dumps(key.default, ensure_ascii=False)
    return f"| `{key.name}` | {cell(type_of(key.schema, definitions))} | `{cell(default)}` | {cell(key.description)} |"


TABLE = ["| Key | Type | Default | Description |", "| --- | --- | --- | --- |"]


def readme_text(keys: list[Key], definitions: dict, header: str) -> str:
    """The chart README: the values.yaml header, the top-level values, then one table per section."""
    lines = ["<!-- Generated by tools/chart_schema.py from values.yaml (make schema): do not edit. -->",
             "# r1v chart", "", header, "",
             "The Grafana dashboard (`dashboards/r1v.json`) is kept by hand; its queries are tested against the",
             "metric registries (tests/chart/test_dashboard.py).", "", "## Values", "",
             "### Top level", "", *TABLE]
    lines += [row(k, definitions) for k in keys if len(k.path) == 1 and k.leaf]
    for top in (k for k in keys if len(k.path) == 1 and not k.leaf):
        lines += ["", f"### {top.name}", ""]
        if top.description:
            lines += [top.description, ""]
        lines += TABLE
        lines += [row(k, definitions) for k in keys if k.path[0] == top.name and k.leaf]
    return "\n".join(lines) + "\n"


def header_of(values_text: str) -> str:
    """The file's first comment block: what one release is (the annotation syntax is left out)."""
    block = []
    for line in values_text.splitlines():
        if not line.startswith("#"):
            break
        block.append(line[2:] if line.startswith("# ") else "")
    return " ".join(block[:block.index("")] if "" in block else block).strip()


def outputs(chart: Path = CHART) -> dict[Path, str]:
    """Each generated file and the text it must hold."""
    values_text = (chart / "values.yaml").read_text()
    definitions = yaml.safe_load(DEFINITIONS.read_text())
    schema, keys = generate(values_text, definitions)
    return {chart / "values.schema.json": schema_text(schema),
            chart / "README.md": readme_text(keys, definitions, header_of(values_text))}


def undocumented(chart: Path = CHART) -> list[str]:
    """The leaves of values.yaml without a `# --` description."""
    values_text = (chart / "values.yaml").read_text()
    _, keys = generate(values_text, yaml.safe_load(DEFINITIONS.read_text()))
    return [k.name for k in keys if k.leaf and not (k.marked and k.description)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    try:
        files = outputs()
        missing = undocumented()
    except ValuesError as e:
        print(e, file=sys.stderr)
        return 2
    if missing:
        print(f"values.yaml: {missing[0]}: no `# --` description ({len(missing)} leaves without one)", file=sys.stderr)
        return 2
    stale = [path for path, text in files.items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(REPO)} is not what values.yaml generates: run `make schema`", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(files[path])
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
