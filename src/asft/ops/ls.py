"""`asft ls [modes|benchmarks|presets|protocols|policies]`: what a config can name, one line each.

With `--configfile`, the config's plugins (user loss modes) and eval.include_path (YAML benchmarks)
are loaded first, so their modes and benchmarks are listed beside the built-in ones.
"""

from __future__ import annotations

from pathlib import Path

KINDS = ("modes", "benchmarks", "presets", "protocols", "policies")
NOT_PRESETS = ("schema.yaml", "published.yaml")  # config/ files that are not configurations


def _table(rows: list[tuple[str, str]]) -> list[str]:
    width = max((len(name) for name, _ in rows), default=0)
    return [f"  {name.ljust(width)}  {text}".rstrip() for name, text in rows]


def mode_rows() -> list[tuple[str, str]]:
    from asft.train.modes import available_modes, get_mode

    rows = []
    for name in available_modes():
        mode = get_mode(name)
        tags = []
        if mode.uses_kl:
            tags.append("+ kl_weight * KL")
        if mode.needs_ref_probs:
            tags.append("reads the reference")
        if mode.defaults:
            tags.append(", ".join(f"{k}={v}" for k, v in mode.defaults.items()))
        if mode.source is not None:
            tags.append(f"plugin {mode.source.plugin}")
        extra = f" [{'; '.join(tags)}]" if tags else ""
        rows.append((name, f"{mode.description or '(no description)'}{extra}"))
    return rows


def benchmark_rows() -> list[tuple[str, str]]:
    from asft.eval.benchmarks import available_benchmarks, describe_benchmark, get_benchmark

    rows = []
    for name in available_benchmarks():
        bench = get_benchmark(name)
        choice = " [multiple choice]" if bench.multiple_choice else ""
        rows.append((name, f"{describe_benchmark(bench)}{choice}"))
    return rows


def preset_rows(config_dir: Path | None = None) -> list[tuple[str, str]]:
    from asft.workflow.config import ROOT

    folder = Path(config_dir) if config_dir else ROOT / "config"
    rows = []
    for path in sorted(folder.glob("*.yaml")):
        if path.name in NOT_PRESETS:
            continue
        first = next((line.lstrip("#").strip() for line in path.read_text(encoding="utf-8").splitlines()
                      if line.startswith("#") and line.lstrip("#").strip()), "")
        rows.append((f"config/{path.name}", first))
    return rows


def protocol_rows() -> list[tuple[str, str]]:
    from asft.eval.protocols import PROTOCOLS

    rows = [(name, protocol.description) for name, protocol in PROTOCOLS.items()]
    return [*rows, ("custom", "the eval.* fields as the config gives them (template, n_samples, temperature, ...)")]


def policy_rows() -> list[tuple[str, str]]:
    from asft.eval.grading import POLICIES, policy_description, policy_version

    return [(name, f"{policy_description(name)} (version {policy_version(name)})") for name in POLICIES]


ROWS = {"modes": mode_rows, "benchmarks": benchmark_rows, "presets": preset_rows, "protocols": protocol_rows,
        "policies": policy_rows}
TITLES = {"modes": "loss modes (modes:)", "benchmarks": "benchmarks (eval.benchmarks:)",
          "presets": "presets (--configfile)", "protocols": "evaluation protocols (eval.protocol:)",
          "policies": "grading policies (eval.grading:)"}


def listing(kind: str | None = None) -> str:
    """The text `asft ls` prints: one section per kind (all of them without `kind`)."""
    if kind is not None and kind not in KINDS:
        from asft.core.names import did_you_mean

        raise ValueError(f"unknown list '{kind}'{did_you_mean(kind, KINDS)}; known: {', '.join(KINDS)}")
    kinds = [kind] if kind else list(KINDS)
    lines: list[str] = []
    for name in kinds:
        if len(kinds) > 1:
            lines += ([""] if lines else []) + [f"{TITLES[name]}:"]
        lines += _table(ROWS[name]())
    return "\n".join(lines) + "\n"


def run_ls(kind: str | None, configfiles: list[str]) -> int:
    if configfiles:
        from asft.workflow.config import load_config

        load_config(*map(Path, configfiles))  # registers its plugins' modes and its YAML benchmarks
    print(listing(kind), end="")
    return 0
