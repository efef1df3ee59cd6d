# Parse-time setup: validate the config, build the content-keyed plan, expose input functions.
# All logic lives in src/asft; this file only connects the plan to the rules.
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from asft.config import ConfigError, parse_config
from asft.plan import build_plan

try:
    CFG = parse_config(config)
except ConfigError as error:
    raise WorkflowError(str(error))
validate(config, schema="../config/schema.yaml", set_default=False)
PLAN = build_plan(CFG)
RES = CFG.resources


wildcard_constraints:
    key="[0-9a-f]{16}",


def parent_manifests(stage):
    """Input function: the manifests of a node's parent artifacts, by role."""

    def inputs(wildcards):
        node = PLAN.node(stage, wildcards.key)
        return {role: f"results/{ref}/manifest.json" for role, ref in node.parents.items()}

    return inputs


tokenize_inputs = parent_manifests("tokenize")
train_inputs = parent_manifests("train")
merge_inputs = parent_manifests("merge")
eval_inputs = parent_manifests("eval")


def report_labels(stage):
    """Report labels of a node (train set, mode, seed) for `snakemake --report`."""

    def labels(wildcards):
        return {name: str(value) for name, value in PLAN.node(stage, wildcards.key).labels.items()}

    return labels


train_labels = report_labels("train")


def eval_manifests(wildcards):
    return [f"results/eval/{key}/manifest.json" for key in PLAN.keys("eval")]


def final_outputs():
    return ["results/table.csv", "results/table.md"]
