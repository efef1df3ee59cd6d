"""Every command the documentation shows runs as written: each is dry-run, offline, in a copy of the repository.

Where commands are read from (afresh on every run, so new docs and presets are picked up):
- fenced code blocks of README.md and docs/*.md, `$ ` prompts included; an `export NAME=value` line
  applies to the commands after it in the same block, as it would in a shell;
- comment lines `#   snakemake ...` of config/*.yaml, profiles/*/config.yaml and the Makefile;
- `make run` / `make report` (with `CONFIG=...` or without) anywhere in those files.
A command may continue on the next line after a trailing `\\`; a trailing `# comment` is not part of it.

The guard tests exist because `--configfile` takes several values: in
`snakemake --cores all --configfile config/paper_math.yaml results/table.csv` Snakemake reads the target as
a second config file (a traceback in a fresh clone, a YAML error after a run). Targets go first:
`snakemake --cores all results/table.csv --configfile config/paper_math.yaml`.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The venv running this test holds snakemake, asft and the SLURM executor plugin.
VENV_BIN = Path(sys.executable).parent
PAPER_PRESETS = ("paper_math", "paper_math_lora", "paper_medical", "fork_quick")
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
DRY_RUN_TIMEOUT_S = 300

COMMAND_START = re.compile(r"^(?:\$\s+)?(?:[A-Za-z_]\w*=\S*\s+)*(?:snakemake|asft\s+plan)(?:\s|$)")
EXPORT_LINE = re.compile(r"^export\s+[A-Za-z_]\w*=")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=")
MAKE_COMMAND = re.compile(r"\bmake (?:run|report)\b(?: +[A-Z_]+=[^\s`'\"]+)*")
INLINE_SNAKEMAKE = re.compile(r"`((?:[A-Za-z_]\w*=\S+ )*snakemake [^`]+)`")
PLACEHOLDER = re.compile(r"^(?:\.\.\.|<[^>]*>)$")
Env = tuple[tuple[str, str], ...]  # NAME=value pairs a command runs with


@dataclass(frozen=True)
class DocCommand:
    """One command as the documentation writes it, and where."""

    source: str                        # "docs/cluster.md:17"
    text: str                          # as written, continuation lines joined
    env: Env                           # NAME=value before the command, and `export`s earlier in its block
    argv: tuple[str, ...]


# --- reading the documentation ------------------------------------------------------------------------------


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def commented_files() -> list[Path]:
    """Files whose comments show commands: the presets, the profiles, the Makefile."""
    files = [*sorted((ROOT / "config").glob("*.yaml")), *sorted((ROOT / "profiles").glob("*/config.yaml"))]
    return [*files, ROOT / "Makefile"]


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def fenced_blocks(path: Path) -> list[list[tuple[int, str]]]:
    """The lines of each fenced code block, with their 1-based line numbers."""
    blocks: list[list[tuple[int, str]]] = []
    current: list[tuple[int, str]] | None = None
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.lstrip().startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current.append((number, line))
    return blocks


def comment_blocks(path: Path) -> list[list[tuple[int, str]]]:
    """Runs of whole-line comments, without the `#`: a continued command spans consecutive comment lines."""
    blocks: list[list[tuple[int, str]]] = []
    current: list[tuple[int, str]] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.lstrip().startswith("#"):
            current.append((number, line.lstrip()[1:]))
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    return blocks


def join_continuations(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Lines ending in `\\` joined with the next, numbered by their first line."""
    joined: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, line in lines:
        start, text = pending if pending else (number, "")
        text = f"{text} {line.strip()}".strip()
        if text.endswith("\\"):
            pending = (start, text[:-1].rstrip())
        else:
            joined.append((start, text))
            pending = None
    if pending:
        joined.append(pending)
    return joined


def split_command(text: str) -> tuple[Env, tuple[str, ...]]:
    """Shell words of a command line: leading NAME=value assignments, then the command itself."""
    words = shlex.split(text.removeprefix("$").strip(), comments=True)
    env: list[tuple[str, str]] = []
    while words and ENV_ASSIGNMENT.match(words[0]):
        name, _, value = words.pop(0).partition("=")
        env.append((name, value))
    return tuple(env), tuple(words)


def commands_in_block(path: Path, block: list[tuple[int, str]]) -> list[DocCommand]:
    commands: list[DocCommand] = []
    exported: dict[str, str] = {}
    for number, text in join_continuations(block):
        if EXPORT_LINE.match(text):
            exported.update(split_command(text.removeprefix("export"))[0])
        elif COMMAND_START.match(text):
            env, argv = split_command(text)
            merged = {**exported, **dict(env)}  # NAME=value before the command wins over an earlier export
            commands.append(DocCommand(f"{relative(path)}:{number}", text, tuple(merged.items()), argv))
    return commands


def documented_commands() -> list[DocCommand]:
    """Every `snakemake ...` and `asft plan ...` command line of the docs and the commented files."""
    commands: list[DocCommand] = []
    for path in markdown_files():
        for block in fenced_blocks(path):
            commands += commands_in_block(path, block)
    for path in commented_files():
        for block in comment_blocks(path):
            commands += commands_in_block(path, block)
    return commands


def documented_make_commands() -> list[DocCommand]:
    """`make run` / `make report [CONFIG=...]`, once each, wherever the docs, comments or prose show them."""
    found: dict[str, DocCommand] = {}
    for path in [*markdown_files(), *commented_files()]:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            for match in MAKE_COMMAND.finditer(line):
                text = match.group(0).rstrip(".,;:)")  # the command ends where the sentence goes on
                found.setdefault(text, DocCommand(f"{relative(path)}:{number}", text, (), tuple(text.split())))
    return list(found.values())


def inline_snakemake_spans() -> list[DocCommand]:
    """`snakemake ...` in backticks in prose: often abbreviated (`...`), so only checked for argument order."""
    spans: list[DocCommand] = []
    for path in [*markdown_files(), *commented_files()]:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            for match in INLINE_SNAKEMAKE.finditer(line):
                env, argv = split_command(match.group(1))
                spans.append(DocCommand(f"{relative(path)}:{number}", match.group(1), env, argv))
    return spans


def is_snakemake(command: DocCommand) -> bool:
    return command.argv[:1] == ("snakemake",)


def configfiles(argv: tuple[str, ...]) -> list[str]:
    """The values of every `--configfile`/`--configfiles` (space-separated form: it takes several)."""
    values: list[str] = []
    for index, word in enumerate(argv):
        if word in ("--configfile", "--configfiles"):
            values += option_values(argv, index)
        elif word.startswith(("--configfile=", "--configfiles=")):
            values.append(word.partition("=")[2])
    return values


def option_values(argv: tuple[str, ...], index: int) -> list[str]:
    """The words after argv[index] up to the next option: what a many-valued option takes."""
    values: list[str] = []
    for word in argv[index + 1:]:
        if word.startswith("-"):
            break
        values.append(word)
    return values


def order_problems(argv: tuple[str, ...], allow_placeholders: bool = False) -> list[str]:
    """Words that a many-valued option would swallow although they are not its values (e.g. a target)."""
    looks_valid: dict[str, Callable[[str], bool]] = {
        "--configfile": lambda word: word.endswith(CONFIG_SUFFIXES),
        "--configfiles": lambda word: word.endswith(CONFIG_SUFFIXES),
        "--config": lambda word: "=" in word,
        "-C": lambda word: "=" in word,
    }
    problems: list[str] = []
    for index, word in enumerate(argv):
        if word not in looks_valid:
            continue
        for value in option_values(argv, index):
            if not (looks_valid[word](value) or (allow_placeholders and PLACEHOLDER.match(value))):
                problems.append(f"`{value}` after {word} is read as one of its values; put targets before {word}")
    return problems


COMMANDS = documented_commands()
MAKE_COMMANDS = documented_make_commands()


# --- running a command in a scratch copy ----------------------------------------------------------------------


def working_tree_files() -> list[Path]:
    """The files git tracks or would track (new presets too), as they are in the working tree now."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    return [Path(name) for name in listing.split("\0") if name and (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def scratch_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository: the dry-runs write .snakemake/ there, never into the checkout."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git to list the repository's files")
    scratch = tmp_path_factory.mktemp("docs-commands") / "repo"
    for name in working_tree_files():
        (scratch / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, scratch / name)
    return scratch


def outside_paths_moved_into(scratch: Path, word: str) -> str:
    """Absolute paths in the docs are examples (`--directory /tmp/try`, `HF_HOME=/shared/hf`): they are
    moved under the scratch copy so that the test writes nowhere else."""
    prefix, equals, value = word.partition("=") if word.startswith("--") and "=" in word else ("", "", word)
    if value.startswith("/") and not value.startswith(str(scratch)):
        value = str(scratch / "outside" / value.lstrip("/"))
    return prefix + equals + value


def command_environment(scratch: Path, doc_env: Env) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    # The copy's package, not the editable install's (which points at the checkout).
    env["PYTHONPATH"] = str(scratch / "src")
    env["HF_HOME"] = str(scratch / "outside" / "hf-home")  # never the user's cache
    env.update({name: outside_paths_moved_into(scratch, value) for name, value in doc_env})
    env["HF_HUB_OFFLINE"] = "1"  # last: whatever a command sets, nothing may come from the hub
    return env


@pytest.fixture(scope="module")
def run_in_scratch(scratch_repo: Path) -> Callable[[tuple[str, ...], Env], subprocess.CompletedProcess]:
    """Runs a command in the scratch copy, once per distinct command (several files show the same one)."""
    done: dict[tuple, subprocess.CompletedProcess] = {}

    def run(argv: tuple[str, ...], doc_env: Env = ()) -> subprocess.CompletedProcess:
        key = (argv, doc_env)
        if key not in done:
            moved = [outside_paths_moved_into(scratch_repo, word) for word in argv]
            done[key] = subprocess.run(moved, cwd=scratch_repo, env=command_environment(scratch_repo, doc_env),
                                       capture_output=True, text=True, timeout=DRY_RUN_TIMEOUT_S)
        return done[key]

    return run


def dry_run_argv(argv: tuple[str, ...]) -> tuple[str, ...]:
    """The command as written, made side-effect free: Snakemake with --dry-run; `asft plan` only reads."""
    return (*argv, "--dry-run", "--quiet") if argv[0] == "snakemake" else argv


def failure_report(command: DocCommand, ran: tuple[str, ...], result: subprocess.CompletedProcess) -> str:
    return (f"{command.source}: `{command.text}` does not run as written (exit {result.returncode}).\n"
            f"ran: {shlex.join(ran)}\n--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-3000:]}")


def without_report_option(argv: tuple[str, ...]) -> tuple[str, ...]:
    """A report needs a finished run's files, which a dry-run lacks; the rest (config, targets) still runs."""
    words = list(argv)
    if "--report" in words:
        index = words.index("--report")
        has_value = index + 1 < len(words) and words[index + 1].endswith((".html", ".zip"))
        del words[index:index + 1 + has_value]
    return tuple(words)


# --- guards: no command may come back in the wrong order ------------------------------------------------------


def test_the_docs_show_commands_for_the_paper_presets():
    snakemake_commands = [c for c in COMMANDS if is_snakemake(c)]
    assert snakemake_commands, "no `snakemake ...` command found in README.md, docs/*.md or config/*.yaml"
    assert any(c.argv[:2] == ("asft", "plan") for c in COMMANDS), "no `asft plan ...` command found"
    assert any("CONFIG=" in c.text and c.argv[1] == "report" for c in MAKE_COMMANDS), \
        "no `make report CONFIG=...` found"
    shown = {Path(f).stem for c in snakemake_commands for f in configfiles(c.argv)}
    missing = [preset for preset in PAPER_PRESETS if preset not in shown]
    assert not missing, f"no documented snakemake command runs the preset(s) {missing}; shown: {sorted(shown)}"


def test_no_target_follows_configfile():
    problems = [f"{c.source}: `{c.text}`: {problem}"
                for c in COMMANDS if is_snakemake(c) for problem in order_problems(c.argv)]
    problems += [f"{c.source}: `{c.text}`: {problem}"
                 for c in inline_snakemake_spans() for problem in order_problems(c.argv, allow_placeholders=True)]
    assert not problems, "\n".join(problems)


def test_documented_commands_are_complete():
    """A command shown in a code block or a `#   snakemake` comment is meant to be pasted: no `...`, no `<files>`."""
    incomplete = [f"{c.source}: `{c.text}`" for c in COMMANDS if any(PLACEHOLDER.match(word) for word in c.argv)]
    assert not incomplete, "placeholders in runnable commands (write a real preset):\n" + "\n".join(incomplete)


def test_configfiles_of_documented_commands_exist():
    missing = [f"{c.source}: {name}" for c in COMMANDS for name in configfiles(c.argv) if not (ROOT / name).is_file()]
    assert not missing, "\n".join(missing)


# --- every command, dry-run ----------------------------------------------------------------------------------
# A few seconds each (Snakemake parses the workflow and builds the DAG), about 90 s in all on 2 cores: `slow`.
# The guards above take under a second and keep running with -m "not slow".


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS, ids=[c.source for c in COMMANDS])
def test_documented_command_dry_runs(command: DocCommand, run_in_scratch):
    ran = dry_run_argv(command.argv)
    result = run_in_scratch(ran, command.env)
    assert result.returncode == 0, failure_report(command, ran, result)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("command", MAKE_COMMANDS, ids=[f"{c.source} {c.text}" for c in MAKE_COMMANDS])
def test_documented_make_command_dry_runs(command: DocCommand, scratch_repo: Path, run_in_scratch):
    # `make -n` prints the recipe (the venv set-up too, when its stamp is missing) without running it.
    printed = subprocess.run(["make", "-n", *command.argv[1:]], cwd=scratch_repo, capture_output=True, text=True,
                             timeout=60)
    assert printed.returncode == 0, f"{command.source}: `{command.text}`: {printed.stderr}"
    recipes = [tuple(shlex.split(line)) for line in printed.stdout.splitlines()
               if line.split() and Path(line.split()[0]).name == "snakemake"]
    assert recipes, f"{command.source}: `{command.text}` runs no snakemake:\n{printed.stdout}"
    config = dict(word.split("=", 1) for word in command.argv[2:]).get("CONFIG")
    for recipe in recipes:
        if config:
            assert configfiles(recipe) == [config], f"`{command.text}` runs `{shlex.join(recipe)}`"
        assert not order_problems(recipe), f"`{command.text}` runs `{shlex.join(recipe)}`: {order_problems(recipe)}"
        ran = dry_run_argv(("snakemake", *without_report_option(recipe[1:])))
        result = run_in_scratch(ran, ())
        assert result.returncode == 0, failure_report(command, ran, result)
