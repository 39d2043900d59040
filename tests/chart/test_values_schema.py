"""values.yaml is the one description of the chart: values.schema.json and README.md are generated
from its comments (tools/chart_schema.py, `make schema`), every leaf is documented, and the schema
keeps every object closed."""

from __future__ import annotations

import json
import shutil

import jsonschema
import pytest
import yaml

from tests.chart.render import CHART
from tools import chart_schema

VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


def _schema() -> dict:
    return json.loads((CHART / "values.schema.json").read_text())


def _maps(values: dict, schema: dict, path=()):
    """Every map of values.yaml the schema describes key by key (not a $ref'd or open map)."""
    for name, sub in values.items():
        node = schema["properties"][name]
        if isinstance(sub, dict) and "properties" in node:
            yield (*path, name)
            yield from _maps(sub, node, (*path, name))


def _with(values: dict, path: tuple[str, ...], key: str, value) -> dict:
    out = json.loads(json.dumps(values))
    node = out
    for name in path:
        node = node[name]
    node[key] = value
    return out


def test_schema_and_readme_regenerate_byte_identically():
    for path, text in chart_schema.outputs().items():
        assert path.read_text() == text, f"{path.name} is not what values.yaml generates: run `make schema`"
    assert chart_schema.main(["--check"]) == 0


def test_every_leaf_of_values_yaml_has_a_description():
    assert chart_schema.undocumented() == []
    readme = (CHART / "README.md").read_text()
    _, keys = chart_schema.generate((CHART / "values.yaml").read_text(),
                                    yaml.safe_load(chart_schema.DEFINITIONS.read_text()))
    leaves = [k for k in keys if k.leaf]
    assert len(leaves) > 140
    for key in leaves:
        assert f"| `{key.name}` |" in readme


def test_the_defaults_satisfy_the_generated_schema():
    jsonschema.Draft7Validator.check_schema(_schema())
    jsonschema.validate(VALUES, _schema())


@pytest.mark.parametrize("path", [(), *_maps(VALUES, _schema())], ids=lambda p: ".".join(p) or "top")
def test_a_misspelt_key_in_any_map_of_values_yaml_is_refused(path):
    errors = list(jsonschema.Draft7Validator(_schema()).iter_errors(_with(VALUES, path, "enabeld", True)))
    assert errors and "enabeld" in errors[0].message


@pytest.mark.parametrize("path, key, value", [
    ((), "nodes", 129),                                   # maximum
    ((), "jobKind", "MPIJob"),                            # enum
    (("image", "trainer"), "digest", "sha256:abc"),       # pattern
    (("trainer",), "extraVolumes", [{"name": "data", "emptyDir": {}}]),  # a reserved name (`not` enum)
    (("trainer",), "resources", {"requests": {"cpu": "lots"}}),          # a quantity, through $ref
    (("monitoring",), "interval", "15 seconds"),          # a Prometheus duration
    (("runPolicy",), "activeDeadlineSeconds", 0),         # minimum of an integer-or-null
])
def test_the_annotations_keep_their_constraints(path, key, value):
    assert not jsonschema.Draft7Validator(_schema()).is_valid(_with(VALUES, path, key, value))


def test_a_required_key_cannot_be_dropped():
    values = json.loads(json.dumps(VALUES))
    del values["image"]["trainer"]["repository"]
    assert not jsonschema.Draft7Validator(_schema()).is_valid(values)


@pytest.mark.parametrize("text, message", [
    ("labels: {}\n", "labels: an empty map or null needs"),
    ("a:\n  # -- x\n  b: null\n", "a.b: an empty map or null needs"),
    ("ports: [1, 2]\n", "ports: a list needs"),
    ('# @schema {"$ref": "#/definitions/nowhere"}\nx: 1\n', "#/definitions/nowhere is not in"),
    ("# @schema {pattern: x}\nx: a\n", "x: @schema is not one line of JSON"),
])
def test_the_generator_refuses_a_value_that_would_leave_the_schema_open(text, message):
    with pytest.raises(chart_schema.ValuesError, match=message.replace("$", "\\$")):
        chart_schema.generate(text, {})


def test_comments_reach_the_schema_and_the_readme_and_list_items_are_not_keys(tmp_path):
    chart = tmp_path / "r1v"
    shutil.copytree(CHART, chart)
    text = (chart / "values.yaml").read_text()
    text = text.replace("# -- Labels added to every object.", "# -- Labels on every object, said differently.")
    (chart / "values.yaml").write_text(text)
    files = chart_schema.outputs(chart)
    schema = json.loads(files[chart / "values.schema.json"])
    assert schema["properties"]["commonLabels"]["description"] == "Labels on every object, said differently."
    assert "Labels on every object, said differently." in files[chart / "README.md"]
    # trainer.tolerations' items hold `operator:` and `effect:` lines: they are not keys of trainer.
    assert "operator" not in schema["properties"]["trainer"].get("properties", {})
    assert "`trainer.tolerations.operator`" not in files[chart / "README.md"]
