"""`asft migrate`: adopt evaluations made before grading became its own stage, so nothing is generated again.

Until evaluation was split into `generate` (the samples: the GPU part) and `score` (grading: CPU,
seconds), one `eval` stage wrote both into `results/eval/<key>/`. Its samples are exactly what a
`generate` job makes from the same settings and parents, so each sound one is adopted as
`results/generate/<key>/` under the key the plan now gives it (the same settings and parents hashed
as a `generate` stage); Snakemake then runs only the scores and the table. The old folder is left
as it was (remove it once the new table is built).

What is adopted is checked first: every file's sha256 against the old manifest, and its key against
its recorded settings and parents. Samples gain their problem index (`problem`), the old verdict
columns go (the score stage writes them), and `generation.json` is built from the old scores.json.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from asft.eval.generate import GENERATION, SAMPLES
from asft.workflow.artifacts import MANIFEST, Node, file_hashes, writing_artifact
from asft.workflow.integrity import parent_digests, read_manifest
from asft.workflow.keys import content_key, stage_key
from asft.workflow.stages import get_stage

OLD_STAGE = "eval"
OLD_VERSION = 1
#: What the old samples.jsonl rows held that is scoring, not generation.
SCORING_COLUMNS = ("extracted", "correct", "letter_logprobs", "predicted", "predicted_from")
#: What the old scores.json held about generation (the rest is scoring).
GENERATION_FIELDS = ("benchmark", "benchmark_file", "scoring", "n_problems", "n_samples", "generation_seconds",
                     "tokens_per_second", "prompts_per_second", "drift", "wall_seconds")


def _old_key(manifest: dict[str, Any]) -> str:
    return content_key(OLD_STAGE, manifest.get("version", OLD_VERSION), manifest["settings"], manifest["parents"])


def _problem_of(rows: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Rows with their problem index: the old rows ran problem by problem, samples from 0."""
    problem = -1
    for row in rows:
        if int(row["sample"]) == 0:
            problem += 1
        yield {"problem": problem, **{k: v for k, v in row.items() if k not in SCORING_COLUMNS}}


def adopt(old: Path, results: Path) -> tuple[str, str]:
    """Adopt one old eval folder; returns (what happened, the new folder or why not)."""
    manifest, problem = read_manifest(old)
    if manifest is None:
        return "skipped", problem
    if manifest.get("stage") != OLD_STAGE or "settings" not in manifest or "parents" not in manifest:
        return "skipped", "not an eval artifact's manifest"
    if _old_key(manifest) != old.name:
        return "skipped", "its settings and parents do not hash to its folder name (edited?)"
    if file_hashes(old) != manifest["files"]:
        return "skipped", "its files differ from its manifest (run `asft verify` on a copy, or delete it)"
    stage = get_stage("generate")
    settings = stage.parse_settings(manifest["settings"])
    if settings.key_payload() != manifest["settings"]:
        return "skipped", "its settings are not those of a generation made by this version"
    parents = {role: results / ref for role, ref in manifest["parents"].items()}
    key = stage_key("generate", settings.key_payload(), manifest["parents"])
    final = results / "generate" / key
    if (final / MANIFEST).is_file():
        return "present", str(final)
    node = Node("generate", key, settings, dict(manifest["parents"]), dict(manifest.get("labels") or {}),
                stage.parse_runtime(manifest.get("runtime")))
    scores = json.loads((old / "scores.json").read_text())
    generation = {name: scores[name] for name in GENERATION_FIELDS if name in scores}
    generation.setdefault("scoring", settings.scoring)
    extra = {"migrated_from": f"{OLD_STAGE}/{old.name}",
             "parent_files": {role: digest for role, digest in parent_digests(parents).items() if digest}}
    with writing_artifact(final, node, extra) as tmp:
        with open(old / SAMPLES, encoding="utf-8") as source, open(tmp / SAMPLES, "w", encoding="utf-8") as out:
            for row in _problem_of(json.loads(line) for line in source):
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
        (tmp / GENERATION).write_text(json.dumps(generation, indent=2) + "\n")
        (tmp / "stats.json").write_text(json.dumps(generation, indent=2) + "\n")
        extra["stats"] = generation
    return "adopted", str(final)


def run_migrate(results: Path) -> int:
    results = Path(results)
    olds = sorted(p.parent for p in (results / OLD_STAGE).glob(f"*/{MANIFEST}"))
    if not olds:
        print(f"nothing to migrate: no {results / OLD_STAGE}/<key>/ folder")
        return 0
    counts: dict[str, int] = {}
    for old in olds:
        what, where = adopt(old, results)
        counts[what] = counts.get(what, 0) + 1
        print(f"{what:8}  {old}  {where}")
    print(", ".join(f"{n} {what}" for what, n in sorted(counts.items()))
          + f"; the old folders are left in {results / OLD_STAGE}/ (remove them once the table is rebuilt)")
    return 1 if counts.get("skipped") else 0
