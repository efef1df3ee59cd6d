"""`asft export`: a training run as a clean, loadable model folder under a readable name (and `--push`).

    asft export results/train/<key> --to exports/qwen-asft [--name "Qwen2.5-7B ASFT"] [--push me/qwen-asft]
    asft export <key>                                      # a train or merge key, found under --results

- a LoRA run's train artifact: the adapter, its `adapter_config.json` pointing at the base model's hub
  id and revision (the train stage writes the path of `results/model/<key>` there); an embedded or
  local base has no hub id, so the adapter points at the absolute path of the model artifact (or at
  `--base`), and the model card says so;
- a merge artifact, or a full fine-tuning run: the weights and tokenizer as they are;
- always: `README.md` (a model card: the run's labels, base model, training settings, the scores of
  every evaluation of this model found under `results/`, the asft version and git commit) and
  `asft_export.json` (the same, for machines).

`--push` uploads the folder with `huggingface_hub.HfApi().upload_folder` (token from the usual
`HF_TOKEN` / `huggingface-cli login`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from asft.workflow.artifacts import KEY_RE, MANIFEST
from asft.workflow.integrity import artifact_report

EXPORT_RECORD = "asft_export.json"
EXPORTABLE = ("train", "merge")


class ExportError(ValueError):
    """Nothing to export, or an artifact that is not sound."""


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def find_artifact(target: str | Path, results: Path) -> Path:
    """The artifact folder of a path (the folder or its manifest.json) or of a train/merge key."""
    path = Path(target)
    if path.name == MANIFEST:
        path = path.parent
    if (path / MANIFEST).is_file():
        return path
    if KEY_RE.match(str(target)):
        found = [results / stage / str(target) for stage in EXPORTABLE if (results / stage / str(target) / MANIFEST).is_file()]
        if found:
            return found[0]
        raise ExportError(f"no train or merge artifact with key {target} under {results}/")
    raise ExportError(f"{target}: not an artifact folder (no {MANIFEST}) and not a key of {results}/train or "
                      f"{results}/merge")


def _parent(results: Path, manifest: dict[str, Any], role: str) -> tuple[Path, dict[str, Any]] | None:
    ref = manifest.get("parents", {}).get(role)
    if not ref:
        return None
    folder = results / ref
    if not (folder / MANIFEST).is_file():
        return None
    return folder, _read_json(folder / MANIFEST)


def _manifests(results: Path, stage: str) -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted((results / stage).glob(f"*/{MANIFEST}")):
        if KEY_RE.match(path.parent.name):
            try:
                yield path.parent, _read_json(path)
            except (OSError, ValueError):
                continue


def find_scores(results: Path, evaluated: set[str]) -> list[dict[str, Any]]:
    """Every score artifact whose generation used one of the `evaluated` artifacts ("merge/<key>", ...)."""
    generations = {f"generate/{folder.name}": manifest for folder, manifest in _manifests(results, "generate")
                   if manifest.get("parents", {}).get("model") in evaluated}
    rows = []
    for folder, manifest in _manifests(results, "score"):
        samples = manifest.get("parents", {}).get("samples")
        if samples not in generations or not (folder / "scores.json").is_file():
            continue
        scores = _read_json(folder / "scores.json")
        labels = manifest.get("labels", {})
        grading = scores.get("grading", {})
        rows.append({
            "benchmark": labels.get("benchmark"),
            "grading": grading.get("policy") or grading.get("method"),
            "accuracy": scores.get("accuracy"),
            "pass": {k: v for k, v in scores.items() if k.startswith("pass@")},
            "n_problems": scores.get("problems") or scores.get("n_problems"),
            "protocol": (generations[samples].get("settings", {}).get("protocol") or {}).get("name", "custom"),
            "score_key": folder.name,
        })
    return sorted(rows, key=lambda r: (str(r["benchmark"]), str(r["grading"])))


def _base(model_manifest: dict[str, Any] | None, model_folder: Path | None) -> dict[str, Any]:
    """The base model as a user names it: a hub id and revision, or where the embedded/local one lies."""
    settings = (model_manifest or {}).get("settings", {})
    source = settings.get("source")
    if source == "hub":
        return {"source": "hub", "id": settings["id"], "revision": settings.get("revision", "main")}
    where = str(model_folder.resolve()) if model_folder else None
    if source == "local":
        return {"source": "local", "id": None, "path": settings.get("path"), "artifact": where}
    return {"source": source or "unknown", "id": None, "artifact": where,
            "recipe": settings.get("embedded") if source == "embedded" else None}


def _train_data(results: Path, train_manifest: dict[str, Any]) -> dict[str, Any]:
    """The data stage's settings of a run (train -> tokenize -> data), as its manifest records them."""
    tokenize = _parent(results, train_manifest, "tokenize")
    data = _parent(results, tokenize[1], "data") if tokenize else None
    return dict(data[1].get("settings", {})) if data else {}


def default_name(base: dict[str, Any], labels: dict[str, Any]) -> str:
    model = (base.get("id") or base.get("source") or "model").split("/")[-1]
    parts = [model, labels.get("mode"), labels.get("train_set"),
             None if labels.get("seed") is None else f"seed{labels['seed']}"]
    return "-".join(re.sub(r"[^A-Za-z0-9._+-]", "_", str(p)) for p in parts if p not in (None, "", "-"))


def _model_card(record: dict[str, Any]) -> str:
    base, labels, scores = record["base"], record["labels"], record["scores"]
    lora = record["format"] == "lora_adapter"
    meta: dict[str, Any] = {"library_name": "peft" if lora else "transformers",
                            "tags": list(dict.fromkeys(["asft", "anchored-supervised-fine-tuning",
                                                        str(labels.get("mode"))]))}
    if base.get("id"):
        meta["base_model"] = base["id"]
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "", f"# {record['name']}", ""]
    what = "A LoRA adapter" if lora else "The full weights"
    lines.append(f"{what} fine-tuned with the `{labels.get('mode')}` loss of "
                 "[ASFT](https://arxiv.org/abs/2509.23753) by the asft reference workflow.")
    lines.append("")
    if base.get("id"):
        revision = base.get("revision", "main")
        lines.append(f"**Base model:** `{base['id']}`" + (f" (revision `{revision}`)" if revision != "main" else ""))
    elif base.get("source") == "embedded":
        lines.append("**Base model:** the workflow's embedded tiny Qwen2 model (pre-trained by the workflow itself, "
                     "not on the hub); " + (f"the adapter points at its artifact `{base.get('artifact')}`."
                                            if lora else "these weights include it."))
    else:
        lines.append(f"**Base model:** a local folder (`{base.get('path')}`), not on the hub"
                     + (f"; the adapter points at `{base.get('base_model_name_or_path')}`." if lora else "."))
    lines += ["", "| run | |", "|---|---|"]
    for key in ("mode", "train_set", "seed"):
        lines.append(f"| {key} | {labels.get(key)} |")
    data = record.get("train_data") or {}
    if data:
        shown = ", ".join(f"{k} {v}" for k, v in data.items() if v not in (None, "", {}) and k != "sha256")
        lines.append(f"| train data | {shown} |")
    lines += [f"| {record['stage']} artifact | `{record['key']}` |", ""]
    if lora:
        lines += ["```python", "from peft import AutoPeftModelForCausalLM", "",
                  f"model = AutoPeftModelForCausalLM.from_pretrained(\"{record.get('push') or 'path/to/this/folder'}\")",
                  "```", ""]
    if scores:
        lines += ["## Scores", "", "| benchmark | grading | protocol | accuracy | pass@k |", "|---|---|---|---|---|"]
        for row in scores:
            passes = ", ".join(f"{k} {v:.2f}" for k, v in row["pass"].items() if isinstance(v, (int, float)))
            accuracy = row["accuracy"]
            lines.append(f"| {row['benchmark']} | {row['grading']} | {row['protocol']} | "
                         f"{accuracy:.2f} | {passes} |" if isinstance(accuracy, (int, float)) else
                         f"| {row['benchmark']} | {row['grading']} | {row['protocol']} | - | {passes} |")
        lines.append("")
    else:
        lines += ["## Scores", "", "No evaluation of this model was found under the results folder.", ""]
    lines += ["## Training settings", "", "```yaml", yaml.safe_dump(record["train_settings"], sort_keys=False).strip(),
              "```", "", "## Provenance", ""]
    packages = record.get("packages") or {}
    lines.append(f"- asft {packages.get('asft', '?')}, git commit `{record.get('git_commit') or 'unknown'}`")
    lines.append("- " + ", ".join(f"{k} {v}" for k, v in packages.items() if k != "asft"))
    lines.append(f"- created {record.get('created')}; the train artifact's manifest lists every setting and file hash")
    return "\n".join(lines) + "\n"


def export_artifact(target: str | Path, *, results: Path = Path("results"), to: Path | None = None,
                    name: str | None = None, base_override: str | None = None, force: bool = False,
                    verify: bool = True, push: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Write the export folder; returns it and its record (what asft_export.json holds)."""
    results = Path(results)
    folder = find_artifact(target, results)
    stage = folder.parent.name
    if verify:
        manifest, problems = artifact_report(folder, stage, use_cache=True)
        if problems:
            raise ExportError(f"{folder} is not sound ({'; '.join(problems)}); run `asft verify`")
    manifest = _read_json(folder / MANIFEST)
    stage = manifest.get("stage", stage)
    if stage not in EXPORTABLE:
        raise ExportError(f"{folder} is a {stage} artifact; export a train or merge artifact")
    results = folder.parent.parent  # the results folder this artifact lives in
    train_folder, train_manifest = folder, manifest
    if stage == "merge":
        found = _parent(results, manifest, "train")
        train_folder, train_manifest = found if found else (None, {})
    model = _parent(results, manifest, "model")
    base = _base(model[1] if model else None, model[0] if model else None)
    settings = train_manifest.get("settings", {})
    lora = stage == "train" and settings.get("method", "lora") == "lora"
    source = folder / "model" if stage == "train" else folder
    if not source.is_dir():
        raise ExportError(f"{folder}: no model folder to export")

    evaluated = {f"{stage}/{folder.name}"}
    if stage == "train":
        evaluated |= {f"merge/{f.name}" for f, m in _manifests(results, "merge")
                      if m.get("parents", {}).get("train") == f"train/{folder.name}"}
    labels = dict(manifest.get("labels", {}))
    record: dict[str, Any] = {
        "name": name or default_name(base, labels),
        "stage": stage, "key": folder.name, "artifact": str(folder.resolve()),
        "format": "lora_adapter" if lora else "full_weights" if stage == "train" else "merged_weights",
        "labels": labels, "base": base, "train_settings": settings,
        "train_key": train_folder.name if train_folder else None,
        "train_data": _train_data(results, train_manifest),
        "scores": find_scores(results, evaluated),
        "packages": manifest.get("packages", {}), "git_commit": manifest.get("git_commit"),
        "created": manifest.get("created"), "push": push,
    }

    to = Path(to) if to else Path("exports") / record["name"]
    if to.exists() and any(to.iterdir()) and not force:
        raise ExportError(f"{to} exists and is not empty; choose another --to or pass --force to replace it")
    tmp = to.parent / f".{to.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copytree(source, tmp, ignore=shutil.ignore_patterns(MANIFEST, ".verified*"))
        if lora:
            config_path = tmp / "adapter_config.json"
            adapter = _read_json(config_path)
            pointed = base_override or base.get("id") or base.get("artifact")
            record["base"]["base_model_name_or_path"] = pointed
            adapter["base_model_name_or_path"] = pointed
            if base.get("id") and not base_override:
                adapter["revision"] = None if base.get("revision") in (None, "main") else base["revision"]
            config_path.write_text(json.dumps(adapter, indent=2, sort_keys=True) + "\n")
        (tmp / EXPORT_RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n")
        (tmp / "README.md").write_text(_model_card(record))
        if to.exists():
            shutil.rmtree(to)
        os.replace(tmp, to)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return to, record


def push_folder(folder: Path, repo_id: str, *, private: bool = False, message: str | None = None) -> str:
    """Upload an export folder to a hub model repository (created if missing); returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                             commit_message=message or f"asft export of {folder.name}")
    return str(getattr(info, "commit_url", info))


def run_export(target: str, *, results: Path, to: str | None, name: str | None, push: str | None,
               base: str | None, force: bool, private: bool, verify: bool = True) -> int:
    folder, record = export_artifact(target, results=results, to=Path(to) if to else None, name=name,
                                     base_override=base, force=force, verify=verify, push=push)
    print(f"exported {record['stage']}/{record['key']} ({record['format']}, {len(record['scores'])} scores) "
          f"to {folder}")
    if record["format"] == "lora_adapter" and not record["base"].get("id") and not base:
        print(f"note: the base model is {record['base']['source']}, not on the hub; the adapter points at "
              f"{record['base'].get('base_model_name_or_path')} (pass --base to name another)")
    if push:
        url = push_folder(folder, push, private=private, message=f"asft export: {record['name']}")
        print(f"pushed to {push}: {url}")
    return 0
