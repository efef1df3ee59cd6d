# Parse-time setup: validate the config, build the content-keyed plan, expose input functions.
# All logic lives in src/asft; this file only connects the plan to the rules.
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from asft.workflow.config import ConfigError, layered_raw, parse_config, table_modes
from asft.workflow.plan import build_plan, write_node_files

try:
    # Presets may `extends:` others; rebuild the config from the files given, in order.
    CFG = parse_config(layered_raw(workflow.config_settings.configfiles or [], workflow.config_settings.config))
except ConfigError as error:
    raise WorkflowError(str(error))
# Jobs see the resolved, typed config (defaults filled in, `--config` strings coerced).
config.clear()
config.update(CFG.model_dump(mode="json"))
validate(config, schema="../config/schema.yaml", set_default=False)
try:
    PLAN = build_plan(CFG)
except (ConfigError, ValueError, FileNotFoundError) as error:
    raise WorkflowError(str(error))
# Each job reads its own node (typed settings, parents, runtime) from here instead of re-parsing the config.
write_node_files(PLAN)
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
rl_inputs = parent_manifests("rl")
generate_inputs = parent_manifests("generate")
score_inputs = parent_manifests("score")


def job_words(stage):
    """Params function: the job in words (`train asft seed 1 on numina_cot_10k`), shown by `message:`."""

    def words(wildcards):
        return PLAN.describe(stage, wildcards.key)

    return words


def report_labels(stage):
    """Report labels of a node (train set, mode, seed) for `snakemake --report`."""

    def labels(wildcards):
        return {name: str(value) for name, value in PLAN.node(stage, wildcards.key).labels.items()}

    return labels


train_labels = report_labels("train")
rl_labels = report_labels("rl")


def score_manifests(wildcards):
    return [f"results/score/{key}/manifest.json" for key in PLAN.keys("score")]


def train_manifests(wildcards):
    """The training runs of the table (their metrics.jsonl make the aggregate's curves.png)."""
    return [f"results/train/{key}/manifest.json" for key in PLAN.keys("train")]


TABLE_KEY = PLAN.table_key()


#: Files of the keyed table folder that `publish` copies to results/ under fixed names.
PUBLISHED = [
    "table.csv",
    "table.md",
    "table.html",
    "table.tex",
    "runs.csv",
    "table.png",
    "curves.png",
    "sweep.png",
    "dynamics.png",
    "models.png",
    "cost.csv",
]


def final_outputs():
    """The keyed table (missing whenever the plan changed, so it is always rebuilt) and its copies."""
    return [f"results/tables/{TABLE_KEY}/{name}" for name in PUBLISHED] + [f"results/{n}" for n in PUBLISHED]
