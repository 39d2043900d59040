"""`helm test`: the recipe parses, the shared volume is writable, and the evaluation gate's identity
can read the training job (its Role names that one job). Runs in the evaluator image; settings by env."""

import json
import os
import sys

import yaml
from kubernetes import client, config

recipe = yaml.safe_load(open("/etc/r1v/recipe.yaml"))
assert isinstance(recipe, dict) and recipe, "recipe.yaml is not a non-empty map"
for name in ("zero2.json", "zero3.json"):
    json.load(open(os.path.join("/etc/r1v", name)))

probe = os.path.join(os.environ["DATA_ROOT"], ".r1v-helm-test")
with open(probe, "w") as f:
    f.write("ok")
os.remove(probe)

config.load_incluster_config()
group, version, plural = os.environ["JOB_API"].split("/")
job = client.CustomObjectsApi().get_namespaced_custom_object(
    group, version, os.environ["POD_NAMESPACE"], plural, os.environ["JOB"])
conditions = [c["type"] for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]
print("recipe keys:", len(recipe), "| volume writable |", job["kind"], os.environ["JOB"], "conditions:", conditions)
sys.exit(1 if "Failed" in conditions else 0)
