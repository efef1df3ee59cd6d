"""`asft verify [--fix]`: check every artifact folder against its manifest.

An artifact `results/<stage>/<key>/` is sound when its `manifest.json` parses, names the same
stage and key as the folder, its settings and parents hash to that key (an edited manifest is
caught), it lists every file in the folder (nothing missing, nothing extra), every listed file has
the recorded sha256 (asft.workflow.integrity, the same check every job runs on its parents), and
the parents it records were not changed since it was made from them. Problems (exit 1):

- corrupted: the manifest does not parse, a file is missing, changed or unlisted, or the key differs;
- incomplete: a non-empty folder without a manifest (nothing the workflow writes looks like that);
- bad checkpoint: the newest `checkpoint-N` of a killed training run lacks its `trainer_state.json`
  (killed while saving); resuming would pick it although it is incomplete.

Informational (exit 0): leftover `<key>.tmp-<pid>` folders of killed jobs, `<key>.partial`
checkpoint folders (the resume points of killed training runs), empty folders Snakemake created
for a job that never finished, `results/*.tmp` and `results/tables/*/*.tmp` files of an interrupted
aggregate, and orphans (sound artifacts whose parent was deleted: still valid; Snakemake does not
rebuild the parent).

`--fix` removes the corrupted and incomplete folders, bad checkpoints and stale leftovers (never a
resume point, never a temporary folder whose process still runs on this host), and with them every
artifact made from a removed one (found through the manifests' `parents`) and the aggregate's
products that read a removed evaluation (`results/tables/<key>/` naming it in its plan.json, and the
fixed-name copies `results/table.csv`, ...). Removing the descendants is what makes a plain
`snakemake` recompute them: Snakemake does not regenerate a missing intermediate file while the
files made from it are present and up to date, so deleting only a corrupted merge would leave it
missing, and its evaluations and the table as they are.

Snakemake's own bookkeeping is checked too: an output that Snakemake marks incomplete
(`.snakemake/incomplete/`, a run killed between a job's last write and Snakemake recording it).
The profiles set rerun-incomplete, so the next run re-runs such a job, which finds its artifact
complete and sound and returns at once; without those profiles Snakemake stops with
"IncompleteFilesException". If the output is a sound artifact, `--fix` clears the mark (what `snakemake --cleanup-metadata FILE` does), keeping the artifact; any
other marked output (a half-written table) is removed so the next run rebuilds it.

`--fix` refuses while a Snakemake lock is held on the working directory, so it never deletes what a
running job reads or writes. After a SIGKILL, run `snakemake --unlock` first.

Concurrency: two workflows on one working directory are kept apart by Snakemake's lock (the second
stops with "Directory cannot be locked"). Two working directories that share one results folder
(a symlink, or `--results` pointing elsewhere) are not: each has its own `.snakemake/locks`, and
this command only sees the lock of `results/..`. That set-up is unsupported.

Cheap to import: no torch, no transformers.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import sys
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from asft.train.checkpoints import TRAINER_STATE, checkpoint_step, checkpoints, complete_checkpoints
from asft.workflow.artifacts import KEY_RE, MANIFEST, PARTIAL_RE, TMP_RE
from asft.workflow.integrity import artifact_problems, artifact_report, parent_digests
from asft.workflow.stages import STAGE_NAMES

#: The artifact stages, in pipeline order (the folders under results/), from the stage table.
STAGE_ORDER = STAGE_NAMES
#: What the aggregate writes (results/tables/<key>/ and fixed-name copies in results/).
AGGREGATE_FILES = ("table.csv", "table.md", "table.html", "table.tex", "runs.csv", "table.png", "curves.png", "sweep.png",
                   "dynamics.png", "models.png", "cost.csv", "config.yaml")
TABLES = "tables"

#: Severities: problems make `verify` exit 1; notes are informational.
PROBLEM, NOTE = "problem", "note"


@dataclass(frozen=True)
class Finding:
    kind: str  # corrupted | incomplete | bad-checkpoint | leftover | checkpoint | empty | marked | orphan | ...
    severity: str  # PROBLEM or NOTE
    stage: str
    name: str  # folder or file name under results/<stage>/ (or results/)
    detail: str
    path: Path
    removable: bool  # what --fix deletes

    def row(self) -> tuple[str, str, str, str]:
        return self.kind, self.stage, self.name, self.detail


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (a leftover of another host looks dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def check_artifact(folder: Path, stage: str, hash_workers: int = 4) -> list[str]:
    """Problems of one artifact folder (empty list: sound): asft.workflow.integrity, every file hashed,
    and the parents it was made from unchanged since (their manifest hashes)."""
    manifest, problems = artifact_report(folder, stage, hash_workers=hash_workers)
    recorded = (manifest or {}).get("parent_files") or {}
    refs = (manifest or {}).get("parents") or {}
    if isinstance(recorded, dict) and isinstance(refs, dict):
        now = parent_digests({role: Path(folder).parent.parent / str(ref) for role, ref in refs.items()})
        for role, digest in sorted(recorded.items()):
            if now.get(role) is not None and now[role] != digest:
                problems.append(f"its {role} ({refs[role]}) changed since it was made from it")
    return problems


def _scan_partial(stage: str, partial: Path, key: str) -> list[Finding]:
    complete = (partial.parent / key / MANIFEST).is_file()
    found = checkpoints(partial)
    if complete:
        return [Finding("leftover", NOTE, stage, partial.name,
                        "checkpoints of a training run that has completed since (stale)", partial, True)]
    findings = []
    good = complete_checkpoints(partial)
    for step, path in found:
        if checkpoint_step(path) is None and (not good or step > good[-1][0]):
            findings.append(Finding(
                "bad-checkpoint", PROBLEM, stage, f"{partial.name}/{path.name}",
                f"no readable {TRAINER_STATE} (killed while saving); a resume would pick it though it is incomplete",
                path, True))
    if good:
        detail = f"resume point: {good[-1][1].name} (step {good[-1][0]}); the next run continues from it"
    else:
        detail = "no complete checkpoint yet; the next run starts this training from step 0"
    findings.append(Finding("checkpoint", NOTE, stage, partial.name, detail, partial, False))
    return findings


def scan(results: Path, hash_workers: int = 4) -> list[Finding]:
    """Every finding under `results/`, problems and notes, in pipeline order."""
    results = Path(results)
    findings: list[Finding] = []
    for stage in STAGE_ORDER:
        stage_dir = results / stage
        if not stage_dir.is_dir():
            continue
        for entry in sorted(stage_dir.iterdir()):
            name = entry.name
            if (match := TMP_RE.match(name)) and entry.is_dir():
                pid = int(match.group("pid"))
                if pid_alive(pid):
                    findings.append(Finding("leftover", NOTE, stage, name,
                                            f"temporary folder of a job in progress (pid {pid} runs)", entry, False))
                else:
                    findings.append(Finding("leftover", NOTE, stage, name,
                                            f"temporary folder of a killed job (pid {pid} not running here)",
                                            entry, True))
            elif (match := PARTIAL_RE.match(name)) and entry.is_dir():
                findings += _scan_partial(stage, entry, match.group("key"))
            elif KEY_RE.match(name) and entry.is_dir():
                if not (entry / MANIFEST).exists():
                    if not any(entry.iterdir()):
                        findings.append(Finding("empty", NOTE, stage, name,
                                                "empty folder of a job that has not finished", entry, True))
                    else:
                        findings.append(Finding("incomplete", PROBLEM, stage, name,
                                                "files but no manifest.json", entry, True))
                    continue
                problems = check_artifact(entry, stage, hash_workers)
                if problems:
                    detail = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
                    findings.append(Finding("corrupted", PROBLEM, stage, name, detail, entry, True))
            else:
                findings.append(Finding("unexpected", NOTE, stage, name,
                                        "not an artifact folder (left alone)", entry, False))
    if results.is_dir():
        for entry in sorted(results.glob("*.tmp")) + sorted(results.glob(f"{TABLES}/*/*.tmp")):
            findings.append(Finding("leftover", NOTE, "aggregate", str(entry.relative_to(results)),
                                    "temporary file of an interrupted aggregate", entry, entry.is_file()))
        findings += _scan_tables(results / TABLES, hash_workers)
    damaged = {f"{f.stage}/{f.name}" for f in findings if f.severity == PROBLEM}
    for ref, parents in sorted(artifact_parents(results).items()):
        gone = [p for p in parents if not (results / p / MANIFEST).is_file()]
        if gone and ref not in damaged:
            stage, key = ref.split("/")
            rebuild = " ".join(f"{results.name}/{p}/{MANIFEST}" for p in gone)
            findings.append(Finding("orphan", NOTE, stage, key,
                                    f"made from {', '.join(gone)}, no longer present (still valid; left alone). "
                                    f"Snakemake does not rebuild a missing intermediate on its own: "
                                    f"`snakemake --cores all {rebuild} --configfile <yours>` rebuilds it",
                                    results / ref, False))
    return findings


def _scan_tables(tables: Path, hash_workers: int) -> list[Finding]:
    """Results tables are written like artifacts (temporary folder, manifest, rename): check them so."""
    findings = []
    for entry in sorted(tables.iterdir()) if tables.is_dir() else ():
        if (match := TMP_RE.match(entry.name)) and entry.is_dir():
            if not pid_alive(int(match.group("pid"))):
                findings.append(Finding("leftover", NOTE, "aggregate", f"{TABLES}/{entry.name}",
                                        "temporary folder of an interrupted aggregate", entry, True))
        elif KEY_RE.match(entry.name) and entry.is_dir() and any(entry.iterdir()):
            if not (entry / MANIFEST).exists():
                findings.append(Finding("incomplete", PROBLEM, "aggregate", f"{TABLES}/{entry.name}",
                                        "a results table without manifest.json (half written, or made before "
                                        "tables had one): --fix removes it and the next run rebuilds it", entry, True))
                continue
            problems = artifact_problems(entry, TABLES, hash_workers=hash_workers)
            if problems:
                findings.append(Finding("corrupted", PROBLEM, "aggregate", f"{TABLES}/{entry.name}",
                                        "; ".join(problems[:4]), entry, True))
    return findings


def snakemake_locks(workdir: Path) -> list[Path]:
    """Lock files Snakemake holds on a working directory (left behind by a killed run too)."""
    return sorted((Path(workdir) / ".snakemake" / "locks").glob("*.lock"))


def incomplete_marks(workdir: Path) -> dict[str, Path]:
    """Outputs Snakemake marks incomplete: path (relative to workdir) -> marker file.

    Snakemake's file persistence names each marker by the urlsafe base64 of the output path, split
    into '@'-prefixed folder names when longer than a file name may be.
    """
    root = Path(workdir) / ".snakemake" / "incomplete"
    marks = {}
    for marker in root.rglob("*") if root.is_dir() else ():
        if not marker.is_file() or marker.name == "migration_underway":
            continue
        parts = marker.relative_to(root).parts
        encoded = "".join(part.removeprefix("@") for part in parts)
        try:
            marks[base64.urlsafe_b64decode(encoded.encode()).decode()] = marker
        except (ValueError, UnicodeDecodeError):
            continue
    return marks


def _mark_findings(results: Path, findings: list[Finding]) -> list[Finding]:
    workdir = results.resolve().parent
    damaged = {(f.stage, f.name) for f in findings if f.severity == PROBLEM}
    out = []
    for name, marker in sorted(incomplete_marks(workdir).items()):
        target = workdir / name
        try:
            inside = target.resolve().relative_to(results.resolve()).parts
        except ValueError:
            continue
        if not target.exists():
            continue  # a marker without its file is harmless: Snakemake ignores it
        if (len(inside) >= 3 and inside[0] in STAGE_ORDER and KEY_RE.match(inside[1])
                and (results / inside[0] / inside[1] / MANIFEST).is_file() and (inside[0], inside[1]) not in damaged):
            out.append(Finding("marked", NOTE, inside[0], inside[1],
                               f"sound, but Snakemake marks {name} incomplete (killed before it recorded the job); "
                               "--fix clears the mark and keeps the artifact", marker, True))
        elif len(inside) < 3 or inside[0] not in STAGE_ORDER:
            out.append(Finding("incomplete", PROBLEM, "aggregate", name,
                               "Snakemake marks it incomplete (killed while it was written)", target, True))
    return out


def artifact_parents(results: Path) -> dict[str, list[str]]:
    """'stage/key' -> its parents' 'stage/key', from every manifest that parses."""
    parents = {}
    for stage in STAGE_ORDER:
        for manifest in (Path(results) / stage).glob(f"*/{MANIFEST}"):
            try:
                recorded = json.loads(manifest.read_text()).get("parents") or {}
                parents[f"{stage}/{manifest.parent.name}"] = [str(v) for v in dict(recorded).values()]
            except (OSError, ValueError, AttributeError, TypeError):
                continue
    return parents


def descendants(results: Path, removed: set[str]) -> dict[str, str]:
    """Artifacts made (directly or not) from a removed one: 'stage/key' -> the removed ancestor."""
    children: dict[str, list[str]] = {}
    for child, parents in artifact_parents(results).items():
        for parent in parents:
            children.setdefault(parent, []).append(child)
    found: dict[str, str] = {}
    queue = deque((ref, ref) for ref in sorted(removed))
    while queue:
        ref, origin = queue.popleft()
        for child in sorted(children.get(ref, ())):
            if child not in removed and child not in found:
                found[child] = origin
                queue.append((child, origin))
    return found


def aggregate_products(results: Path, removed_evals: set[str]) -> list[Path]:
    """The aggregate's files that read one of the removed evaluations (keys)."""
    if not removed_evals:
        return []
    products = []
    for folder in sorted((Path(results) / TABLES).glob("*")):
        if not folder.is_dir():
            continue
        try:
            rows = json.loads((folder / "plan.json").read_text())["rows"]
            keys = {str(row.get("score_key") or row["eval_key"]) for row in rows}
        except (OSError, ValueError, KeyError, TypeError):
            keys = None  # cannot tell what it read: rebuild it
        if keys is None or keys & removed_evals:
            products.append(folder)
    products += [Path(results) / name for name in AGGREGATE_FILES if (Path(results) / name).is_file()]
    return products


def format_table(rows: Iterable[tuple[str, ...]], header: tuple[str, ...]) -> str:
    rows = [tuple(str(c) for c in row) for row in rows]
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i])
              for i in range(len(header))]
    widths[-1] = 0  # the last column runs free
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def fix_plan(results: Path, findings: list[Finding]) -> list[tuple[Path, str]]:
    """What `--fix` removes, with why: the removable findings, their descendants, the aggregate."""
    results = Path(results)
    plan = [(f.path, f"{f.kind}: {f.detail}") for f in findings if f.removable]
    removed = {f"{f.stage}/{f.name}" for f in findings
               if f.removable and f.severity == PROBLEM and f.stage in STAGE_ORDER and KEY_RE.match(f.name)}
    for ref, origin in descendants(results, removed).items():
        plan.append((results / ref, f"made from {origin}"))
    evals = {ref.split("/")[1] for ref in removed | set(descendants(results, removed)) if ref.startswith(("score/", "eval/"))}
    planned = {path for path, _ in plan}
    for product in aggregate_products(results, evals):
        if product not in planned:
            plan.append((product, "aggregate of a removed evaluation"))
    return plan


def run_verify(results: Path, *, fix: bool = False, out=None) -> int:
    """The `asft verify` command. Returns the exit code: 1 if a problem is (still) there."""
    out = out or sys.stdout
    results = Path(results)
    if not results.is_dir():
        print(f"asft verify: no results folder at {results}; nothing to check", file=out)
        return 0
    workdir = results.resolve().parent
    locks = snakemake_locks(workdir)
    findings = scan(results)
    if not locks:  # while a run holds the lock, its running jobs are rightly marked incomplete
        findings += _mark_findings(results, findings)
    else:  # a running job may be between writes (Snakemake deletes a manifest.json before it re-runs
        # the job; a trainer may be saving a checkpoint): not a problem while the workflow runs
        findings = [dataclasses.replace(f, severity=NOTE, detail=f"{f.detail} (the running workflow may be "
                                        "writing it now, or a killed one left it)")
                    if f.kind in ("incomplete", "bad-checkpoint") else f for f in findings]
    problems = [f for f in findings if f.severity == PROBLEM]
    artifacts = sum(1 for stage in STAGE_ORDER if (results / stage).is_dir()
                    for e in (results / stage).iterdir() if KEY_RE.match(e.name) and (e / MANIFEST).exists())
    if findings:
        print(format_table((f.row() for f in findings), ("finding", "stage", "folder", "detail")), file=out)
    damaged = len({(f.stage, f.name) for f in problems if f.stage in STAGE_ORDER and KEY_RE.match(f.name)})
    print(f"{artifacts} artifacts with a manifest under {results}: {artifacts - damaged} sound, "
          f"{len(problems)} problem(s), {len(findings) - len(problems)} note(s)", file=out)
    if locks:
        print(f"note: Snakemake holds a lock on {workdir} (a run is active, or was killed: then "
              "`snakemake --unlock`)", file=out)
    if not fix:
        if problems:
            print("run `asft verify --fix` to remove them (and what was made from them), then re-run snakemake "
                  "to recompute exactly those", file=out)
        return 1 if problems else 0
    if locks:
        print(f"asft verify: refusing to fix: Snakemake holds a lock on {workdir} ({len(locks)} lock file(s)). "
              "Wait for the running workflow; if it was killed, run `snakemake --unlock` first.", file=out)
        return 1
    plan = fix_plan(results, findings)
    for path, _ in plan:
        _remove(path)
    if plan:
        shown = ((os.path.relpath(path) if Path(path).resolve().is_relative_to(Path.cwd()) else str(path), why)
                 for path, why in plan)
        print(format_table(shown, ("removed", "why")), file=out)
        print(f"removed {len(plan)} item(s); the next `snakemake` run recomputes the removed artifacts "
              "and everything made from them", file=out)
    left = [f for f in problems if f.path.exists()]
    return 1 if left else 0
