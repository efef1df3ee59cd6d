# ASFT reference workflow: download -> tokenize -> train(mode, seed) -> merge -> [rl] -> generate -> score -> aggregate.
# Every artifact lives at results/<stage>/<key>/, where key hashes the stage's resolved settings,
# its semantic version and its inputs' keys (see src/asft/workflow/keys.py and src/asft/workflow/plan.py).
from snakemake.utils import min_version

min_version("9.0")


# The embedded default, found from any working directory; --configfile layers presets on top.
configfile: f"{workflow.basedir}/config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/download.smk"
include: "rules/tokenize.smk"
include: "rules/train.smk"
include: "rules/merge.smk"
include: "rules/rl.smk"
include: "rules/generate.smk"
include: "rules/score.smk"
include: "rules/aggregate.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
