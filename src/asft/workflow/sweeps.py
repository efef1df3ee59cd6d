"""Sweeps: one configuration, many points (the paper's Figures 2-5), built into one plan.

    sweep:                       # a grid: the cartesian product of the lists
      loss.kl_direction: [forward, reverse]
      loss.kl_weight: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5]
    sweep_zip:                   # lists that move together (all the same length)
      train.lr: [5.0e-6, 1.0e-5]
      train.warmup_ratio: [0.1, 0.05]

A point is the base configuration with one value of each swept setting (a dotted name: `train.lr`,
`loss.hparams.asft-sft.alpha`, `train_sets.<name>.size`, `model.id`, ...), validated as a whole
configuration. `sweep_points` expands the grid times the zipped rows; `build_plan` builds every point
into one plan, where nodes with the same content key are one node (one base model, one tokenisation
for all points), and labels each node with the swept values all its points agree on
(asft.workflow.plan.Plan.add), so the table shows a swept setting only where it made a difference.
"""

from __future__ import annotations

import itertools
import json
import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from asft.core.names import did_you_mean
from asft.workflow.config import Config, TrainSetConfig

SWEEP_FIELDS = ("sweep", "sweep_zip")
#: Top-level settings a sweep cannot change, and why.
NOT_SWEPT = {
    "name": "the configuration's name labels its table",
    "sweep": "a sweep does not sweep itself",
    "sweep_zip": "a sweep does not sweep itself",
    "modes": "every mode already runs at every point: list them in modes",
    "seeds": "every seed already runs at every point: list them in seeds",
    "table": "the table is one for all points",
    "resources": "the jobs' resources are one for all points",
    "plugins": "plugins are loaded once: list them all in plugins",
}


@dataclass(frozen=True)
class SweepPoint:
    """One point: the swept values as written (by dotted name, in the sweep's order) and its configuration."""

    values: dict[str, Any]
    config: Config

    def describe(self) -> str:
        return ", ".join(f"{name}={label_value(value)}" for name, value in self.values.items())


def label_value(value: Any) -> Any:
    """A swept value as a label: a number, text or bool as is, anything else as compact JSON text."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def swept_names(cfg: Config) -> list[str]:
    """The swept settings of a config, grid first, in the order written."""
    return [*cfg.sweep, *cfg.sweep_zip]


# --- the dotted names of the settings ---------------------------------------------------------------------


def _kind(annotation: Any) -> tuple[str, Any]:
    """How a field's annotation is walked: a section (a model), the train sets, a free mapping, or a value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section", annotation
    origin = typing.get_origin(annotation)
    if origin is dict:
        return "mapping", None
    if origin is list and typing.get_args(annotation) == (TrainSetConfig,):
        return "train_sets", TrainSetConfig
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return "section", arg
    return "value", None


def setting_names(cfg: Config) -> list[str]:
    """Every dotted name of a setting of `cfg` (train sets by name; mappings by their current keys)."""
    names: list[str] = []

    def walk(model: BaseModel, prefix: str) -> None:
        for field, info in type(model).model_fields.items():
            path = f"{prefix}{field}"
            kind, _ = _kind(info.annotation)
            value = getattr(model, field)
            if kind == "section" and isinstance(value, BaseModel):
                walk(value, path + ".")
            elif kind == "train_sets":
                names.append(path)
                for train_set in value:
                    walk(train_set, f"{path}.{train_set.name}.")
            elif kind == "mapping":
                names.append(path)
                for key, inner in value.items():
                    names.append(f"{path}.{key}")
                    if isinstance(inner, dict):
                        names.extend(f"{path}.{key}.{k}" for k in inner)
            else:
                names.append(path)

    walk(cfg, "")
    return [n for n in names if n.split(".")[0] not in SWEEP_FIELDS]


def _check_name(cfg: Config, field: str, name: str) -> None:
    """A swept name must name a setting of the config (or a key of one of its mappings)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{field}: a key must be a dotted setting name like loss.kl_weight, got {name!r}")
    parts = name.split(".")

    def unknown(why: str = "") -> ValueError:
        hint = did_you_mean(name, setting_names(cfg))
        return ValueError(f"{field}: unknown setting '{name}'{hint}{why}")

    if parts[0] in NOT_SWEPT:
        raise ValueError(f"{field}: '{name}' cannot be swept ({NOT_SWEPT[parts[0]]})")
    model_cls: type[BaseModel] = Config
    value: Any = cfg
    i = 0
    while i < len(parts):
        part = parts[i]
        if part not in model_cls.model_fields:
            raise unknown()
        kind, sub = _kind(model_cls.model_fields[part].annotation)
        value = getattr(value, part, None)
        if kind == "value":
            if i != len(parts) - 1:
                raise unknown(f": '{'.'.join(parts[:i + 1])}' is a single setting")
            return
        if kind == "mapping":
            if ".".join(parts[:i + 1]) == "loss.hparams" and i + 1 < len(parts):
                from asft.train.modes import available_modes

                mode = parts[i + 1]
                if mode not in available_modes():
                    raise ValueError(f"{field}: '{name}' names an unknown mode '{mode}'"
                                     f"{did_you_mean(mode, available_modes())}; known: {', '.join(available_modes())}")
            return  # its keys are free; the point's validation checks them
        if kind == "train_sets":
            if i + 1 == len(parts):
                return  # the whole list
            names = [s.name for s in value]
            ref = parts[i + 1]
            if ref not in names and not (ref.isdigit() and int(ref) < len(names)):
                raise ValueError(f"{field}: '{name}' names no train set '{ref}'{did_you_mean(ref, names)}; "
                                 f"train sets: {', '.join(names)}")
            value = value[int(ref)] if ref not in names else value[names.index(ref)]
            model_cls, i = sub, i + 2
            continue
        model_cls, i = sub, i + 1
    # the name stops at a section: its value is a mapping merged into the section


# --- expansion ---------------------------------------------------------------------------------------------


def check_lists(field: str, lists: Any) -> dict[str, list[Any]]:
    """`sweep` / `sweep_zip` in shape: a mapping of names to non-empty lists of distinct values (zip: equal lengths)."""
    if lists is None:
        return {}
    if not isinstance(lists, dict):
        raise ValueError(f"{field}: expected a mapping of setting names to lists of values "
                         f"(e.g. {{loss.kl_weight: [0.01, 0.05]}}), got {type(lists).__name__}")
    for name, values in lists.items():
        if not isinstance(values, list):
            raise ValueError(f"{field}: '{name}' must be a list of values, got {values!r} "
                             f"(one value: [{json.dumps(values)}])")
        if not values:
            raise ValueError(f"{field}: the list of '{name}' is empty; give at least one value")
        seen = [json.dumps(v, sort_keys=True, default=str) for v in values]
        if len(set(seen)) != len(seen):
            raise ValueError(f"{field}: '{name}' lists a value twice: {values}")
    if field == "sweep_zip":
        lengths = {name: len(values) for name, values in lists.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"{field}: its lists move together and must have the same length, got "
                             + ", ".join(f"{name}: {n}" for name, n in lengths.items()))
    return lists


def _set(raw: dict, name: str, value: Any) -> None:
    """Set a dotted name in a raw (dumped) configuration; a train set is found by name or index."""
    parts = name.split(".")
    node: Any = raw
    i = 0
    while i < len(parts) - 1:
        part = parts[i]
        if part == "train_sets" and node is raw:
            sets = node[part]
            ref = parts[i + 1]
            names = [s["name"] for s in sets]
            node = sets[names.index(ref)] if ref in names else sets[int(ref)]
            i += 2
            if i == len(parts):  # `train_sets.<name>` itself: a mapping merged into that set
                node.update(value)
                return
            continue
        node = node.setdefault(part, {})
        if node is None:
            raise ValueError(f"'{'.'.join(parts[:i + 1])}' is null")
        i += 1
    last = parts[-1]
    if isinstance(value, dict) and isinstance(node.get(last), dict):
        from asft.workflow.config import deep_merge

        node[last] = deep_merge(node[last], value)
    else:
        node[last] = value


def _one_line(error: ValidationError) -> str:
    from asft.workflow.config import _format_error

    return "; ".join(line.strip() for line in _format_error(error).splitlines()[1:])


def sweep_points(cfg: Config) -> list[SweepPoint]:
    """The points of a config: without a sweep, the config itself; else the grid of `sweep` times the
    rows of `sweep_zip`, each point validated as a whole config (an error names the entry and the point)."""
    if not cfg.sweep and not cfg.sweep_zip:
        return [SweepPoint({}, cfg)]
    for field in SWEEP_FIELDS:
        for name in getattr(cfg, field):
            _check_name(cfg, field, name)
    both = set(cfg.sweep) & set(cfg.sweep_zip)
    if both:
        raise ValueError(f"sweep: {', '.join(sorted(both))} is in both sweep and sweep_zip; keep it in one")
    names = swept_names(cfg)
    for a, b in itertools.permutations(names, 2):
        if b.startswith(a + "."):
            raise ValueError(f"sweep: '{a}' and '{b}' overlap (one is inside the other); sweep one of them")
    grid = list(itertools.product(*cfg.sweep.values())) if cfg.sweep else [()]
    rows = list(zip(*cfg.sweep_zip.values())) if cfg.sweep_zip else [()]
    combos = [dict(zip(names, (*g, *r))) for g in grid for r in rows]
    base = cfg.model_dump(mode="json")
    for field in SWEEP_FIELDS:
        base.pop(field)
    points = []
    for index, values in enumerate(combos, start=1):
        raw = json.loads(json.dumps(base))
        where = f"point {index} of {len(combos)} ({', '.join(f'{k}={label_value(v)}' for k, v in values.items())})"
        try:
            for name, value in values.items():
                _set(raw, name, value)
            point = Config.model_validate(raw)
        except ValidationError as error:
            field = "sweep_zip" if all(name in cfg.sweep_zip for name in values) else "sweep"
            raise ValueError(f"{field}: {where}: {_one_line(error)}") from None
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
            raise ValueError(f"sweep: {where}: {error}") from None
        points.append(SweepPoint({k: label_value(v) for k, v in values.items()}, point))
    return points


def describe_sweep(cfg: Config) -> str:
    """The sweep in words, for `asft plan`: its points and each swept setting's values."""
    points = len(sweep_points(cfg))
    shape = [f"{' x '.join(str(len(v)) for v in cfg.sweep.values())} grid"] if cfg.sweep else []
    if cfg.sweep_zip:
        shape.append(f"{len(next(iter(cfg.sweep_zip.values())))} zipped")
    lines = [f"sweep: {points} point{'s' if points != 1 else ''} ({', '.join(shape)})"]
    for field in SWEEP_FIELDS:
        for name, values in getattr(cfg, field).items():
            zipped = " (zipped)" if field == "sweep_zip" else ""
            lines.append(f"  {name}: {', '.join(str(label_value(v)) for v in values)}{zipped}")
    return "\n".join(lines)
