"""The loss modes: one pure function each, registered by name (no torch import, so the config can
list and check modes without loading torch).

Every mode is "detached per-token weights times cross-entropy, plus optionally ``kl_weight`` times a
per-token KL divergence to a reference model", on response tokens only (label ``-100`` is ignored):

    loss = (sum_i w_i * CE_i  +  kl_weight * sum_i KL_i) / D

A mode is one small pure function ``TokenStats -> weights [N]`` registered with :func:`register_mode`;
its keyword-only parameters are its hyper-parameters and their defaults are the upstream ones. The
registry decides, once, what a mode needs: a KL term (``uses_kl``: only such modes take
``kl_weight`` and ``kl_direction``), the reference model's probabilities, the whole call's tokens.
The trainer looks a mode up (:func:`get_mode`) and never branches on its name.

=============  ==========================================  ========  ==================
name           weight w_i                                  KL term   hyper-parameters
=============  ==========================================  ========  ==================
sft            1                                           no
dft            sg(p(y_i))                                  no
sft+kl         1                                           yes
asft           sg(p(y_i))                                  yes
sft-topk       kept_i * n / n_kept                         no        keep=0.7
sft-antiop     1 if CE_i <= cap else cap / (CE_i + 1e-8)   no        mult=3.0
sft-lr         clamp(1 + a*clamp(q(y)-p(y), -1, 1), 0.1)   no        alpha=1.0
asft-sft       sg(p(y_i)) + alpha                          no        alpha=0.1
iw-sft         clamp(exp(temp * mean_{j in seq(i)}         no        temp=1.0,
               (log p(y_j) - log q(y_j))), 0, max_weight)            max_weight=16.0
=============  ==========================================  ========  ==================

(arXiv 2509.23753, "Anchored Supervised Fine-Tuning"; upstream zhuchichi56/ASFT ``train_v2.py``;
extension modes from the fork doub7e/token-SFT; ``asft-sft`` is the paper's Figure 4 ablation, ``iw-sft``
the iw-SFT baseline of its Tables 2-4, Qin & Springenberg 2025, arXiv 2507.12856, emmyqin/iw_sft; see
docs/losses.md.) The weight functions use tensor methods only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from asft.core.names import did_you_mean

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "DEFAULT_KL_DIRECTION",
    "IGNORE_INDEX",
    "KL_DIRECTIONS",
    "LossMode",
    "PluginSource",
    "TokenStats",
    "available_modes",
    "ensure_plugin",
    "get_mode",
    "load_plugin",
    "register_mode",
]

IGNORE_INDEX = -100
"""Label value of positions that carry no loss (prompt and padding)."""

KL_DIRECTIONS = ("ref_policy", "policy_ref")
"""``ref_policy``: KL(ref || policy), the paper's "forward KL" D_KL(pi_base || pi_theta) (its eq. 6 and
Figure 2), what upstream computes and what produced the published numbers (default).
``policy_ref``: KL(policy || ref), the paper's "reverse KL" ablation (Figure 2).
The config also accepts ``forward`` and ``reverse`` (asft.workflow.config.KL_DIRECTION_ALIASES)."""

DEFAULT_KL_DIRECTION = "ref_policy"
"""The one default of the KL direction (the paper's forward KL)."""


@dataclass(frozen=True)
class TokenStats:
    """Detached per-token statistics of the N response tokens, the input of a mode's weight function."""

    ce: Tensor  # (N,) cross-entropy -log p(y_i) under the policy, fp32
    p_target: Tensor  # (N,) p(y_i) = exp(-ce), fp32
    ref_p_target: Tensor | None  # (N,) q(y_i) under the reference model; None unless the mode needs it
    seq: Tensor | None = None  # (N,) int64: the batch row (sequence) of each token, ascending; for sequence-level weights


# --------------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------------

WeightFn = Callable[..., "Tensor"]


@dataclass(frozen=True)
class PluginSource:
    """Where a user's mode comes from: the plugin as the config names it and the sha256 of its source.

    ``plugin`` and ``sha256`` enter the train key (editing the plugin re-trains its modes); ``path``
    says where the train job loads it from (a ``.py`` file, or the ``sys.path`` folder of a module)."""

    plugin: str  # a module name (my_project.my_modes) or a .py file's name (my_modes.py)
    sha256: str  # of the plugin's file(s) and of the modules its lazily named functions live in
    path: str  # the .py file, or the folder a module is imported from; not part of any key


@dataclass(frozen=True)
class LossMode:
    """A registered loss mode: its weight function and what it needs from the caller."""

    name: str
    function: WeightFn | str  # (TokenStats, **hparams) -> detached weights (N,), or "module:function" (lazy)
    uses_kl: bool  # the loss adds kl_weight * KL(. || .) over the full vocabulary
    needs_ref_probs: bool  # the weights read TokenStats.ref_p_target
    batch_level: bool  # a token's weight depends on the other tokens of the call (e.g. top-k, median)
    defaults: Mapping[str, object]  # hyper-parameters and their (upstream) defaults
    description: str = ""  # one line (`asft ls modes`): the function's docstring or register_mode's
    source: PluginSource | None = None  # None: registered by asft itself (or outside a config plugin)

    @property
    def needs_reference(self) -> bool:
        """Whether the caller must provide the reference model's logits / hidden states."""
        return self.uses_kl or self.needs_ref_probs

    @property
    def weight_fn(self) -> WeightFn:
        """The weight function; a lazily named one ("module:function") is imported here, on first use."""
        if callable(self.function):
            return self.function
        return _resolve(self.name, self.function, self.defaults)

    def resolve_hparams(self, hparams: Mapping[str, object]) -> dict[str, object]:
        """The mode's defaults updated with ``hparams``; an unknown name raises ValueError."""
        unknown = sorted(set(hparams) - set(self.defaults))
        if unknown:
            known = ", ".join(self.defaults) or "none"
            raise ValueError(
                f"unknown hyper-parameter(s) {', '.join(map(repr, unknown))} for loss mode {self.name!r}; "
                f"its hyper-parameters: {known}"
            )
        return {**self.defaults, **hparams}

    def weights(self, stats: TokenStats, **hparams: object) -> Tensor:
        """The detached per-token weights (N,) of this mode."""
        return self.weight_fn(stats, **self.resolve_hparams(hparams)).detach()


_MODES: dict[str, LossMode] = {}
_RESOLVED: dict[str, WeightFn] = {}  # "module:function" -> the function
_LOADING: list[str] = []  # the plugin being imported (load_plugin), innermost last


def _signature_defaults(name: str, fn: WeightFn) -> MappingProxyType:
    params = list(inspect.signature(fn).parameters.values())
    hparams = params[1:]
    if not params or any(p.kind is not inspect.Parameter.KEYWORD_ONLY for p in hparams):
        raise TypeError(f"weight function of {name!r} must be fn(stats, *, hparam=default, ...)")
    if any(p.default is inspect.Parameter.empty for p in hparams):
        raise TypeError(f"every hyper-parameter of loss mode {name!r} needs a default")
    return MappingProxyType({p.name: p.default for p in hparams})


def _resolve(name: str, target: str, defaults: Mapping[str, object]) -> WeightFn:
    """Import the lazily named weight function of mode ``name`` and check it takes its hyper-parameters."""
    if target not in _RESOLVED:
        module_name, _, attr = target.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"loss mode {name!r}: cannot import its weight function {target!r}: {error}") from None
        found = dict(_signature_defaults(name, fn))
        if set(found) != set(defaults):
            raise TypeError(f"loss mode {name!r}: {target} takes hyper-parameters {sorted(found)}, but it was "
                            f"registered with {sorted(defaults)}")
        _RESOLVED[target] = fn
    return _RESOLVED[target]


def _first_line(text: str | None) -> str:
    """The first sentence of a docstring's first paragraph, on one line."""
    if not text:
        return ""
    paragraph = " ".join(inspect.cleandoc(text).strip().split("\n\n")[0].split())
    end = re.search(r"\.\s+(?=[A-Z])", paragraph)
    return paragraph if end is None else paragraph[: end.start() + 1]


def register_mode(
    name: str,
    function: WeightFn | str | None = None,
    *,
    uses_kl: bool = False,
    needs_ref_probs: bool = False,
    batch_level: bool = False,
    hparams: Mapping[str, object] | None = None,
    description: str | None = None,
) -> Callable[[WeightFn], WeightFn] | WeightFn | LossMode:
    """Register a weight function as loss mode ``name``.

    Three forms:

    - ``@register_mode("name")`` decorates ``fn(stats, *, hparam=default, ...)``: the function takes a
      :class:`TokenStats` as its only positional argument; its keyword-only parameters, all with
      defaults, are the mode's hyper-parameters. Returns the function unchanged (decorators stack).
    - ``register_mode("name", fn)`` does the same without the decorator syntax.
    - ``register_mode("name", "my_pkg.weights:focal", hparams={"gamma": 2.0})`` registers a function
      that is imported only when the mode's weights are first computed (in the train job). A plugin
      whose weight functions need ``torch`` at import time uses this form, so that parsing the
      workflow stays light; ``hparams`` must name the function's keyword-only parameters.

    A duplicate name raises ValueError (a config plugin that is loaded again replaces its own modes).
    """
    owner = _LOADING[-1] if _LOADING else None

    def add(fn: WeightFn | str) -> LossMode:
        existing = _MODES.get(name)
        if existing is not None and not (owner and existing.source and existing.source.plugin == owner):
            where = f" by plugin {existing.source.plugin!r}" if existing.source else ""
            raise ValueError(f"loss mode {name!r} is already registered{where}")
        if isinstance(fn, str):
            module_name, sep, attr = fn.partition(":")
            if not (module_name and sep and attr):
                raise ValueError(f"loss mode {name!r}: a lazily named weight function is 'module:function', "
                                 f"got {fn!r}")
            defaults = MappingProxyType(dict(hparams or {}))
            text = description or ""
        else:
            if hparams is not None:
                raise TypeError(f"loss mode {name!r}: hparams= is for a lazily named function; a function's "
                                "keyword-only parameters are its hyper-parameters")
            defaults = _signature_defaults(name, fn)
            text = description or _first_line(fn.__doc__)
        source = existing.source if existing is not None else None
        mode = LossMode(name, fn, uses_kl, needs_ref_probs, batch_level, defaults, text, source)
        _MODES[name] = mode
        if owner:
            _REGISTERED_BY.setdefault(owner, []).append(name)
        return mode

    if function is None:

        def decorator(fn: WeightFn) -> WeightFn:
            add(fn)
            return fn

        return decorator
    mode = add(function)
    return function if callable(function) else mode


def get_mode(mode: str | LossMode) -> LossMode:
    """The registered :class:`LossMode` called ``mode`` (a LossMode is returned as is)."""
    if isinstance(mode, LossMode):
        return mode
    try:
        return _MODES[mode]
    except (KeyError, TypeError):
        hint = did_you_mean(mode, _MODES)
        raise ValueError(f"unknown loss mode {mode!r}{hint}; known modes: {', '.join(available_modes())}") from None


def available_modes() -> tuple[str, ...]:
    """Names of the registered loss modes, in registration order."""
    return tuple(_MODES)


# --------------------------------------------------------------------------------------------------
# Plugins: the user's modules that register modes (the config's `plugins:`)
# --------------------------------------------------------------------------------------------------

_PLUGINS: dict[str, tuple[PluginSource, tuple[Path, ...]]] = {}  # plugin name -> its source and files
_REGISTERED_BY: dict[str, list[str]] = {}  # plugin name -> the modes it registered


def _is_file_entry(entry: str) -> bool:
    return entry.endswith(".py") or "/" in entry or os.sep in entry


def _digest(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for file in sorted(set(files), key=str):
        digest.update(file.name.encode() + b"\0" + hashlib.sha256(file.read_bytes()).hexdigest().encode() + b"\n")
    return digest.hexdigest()


def _module_files(module_name: str) -> list[Path]:
    """The source files of a module (a package: every .py file under it), found without importing it
    (a submodule's parent packages are imported, as Python must)."""
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return []
    origin = Path(spec.origin)
    if spec.submodule_search_locations:  # a package
        return sorted(origin.parent.rglob("*.py"))
    return [origin]


def _lazy_files(plugin: str) -> list[Path]:
    """The files of the modules the plugin's lazily named weight functions live in."""
    files: list[Path] = []
    for name in _REGISTERED_BY.get(plugin, []):
        mode = _MODES.get(name)
        if mode is not None and isinstance(mode.function, str):
            files += _module_files(mode.function.partition(":")[0])
    return files


def _import_root(module_name: str, origin: Path) -> Path:
    """The sys.path folder a module was imported from: `a/b/c.py` for `a.b.c` -> the folder above `a`."""
    depth = module_name.count(".") + (1 if origin.name == "__init__.py" else 0)
    return origin.parents[depth]


def _plugin_identity(entry: str, path: str | None) -> tuple[str, str, Path | None]:
    """(name, cache key, file) of a plugin: a .py file is named by its file name and cached by its
    resolved path; a module by its name."""
    if _is_file_entry(entry):
        file = Path(path or entry).resolve()
        return file.name, str(file), file
    return entry, entry, None


def load_plugin(entry: str, *, path: str | None = None) -> PluginSource:
    """Import a plugin (a module name or a ``.py`` file) so that the modes it registers exist; returns
    its source. Loading it again is a no-op unless its files changed (then it runs again and its modes
    are replaced). ``path``: the file, or the folder to import the module from, when it is not
    importable as it is (the train job, run from another folder)."""
    name, cache_key, file = _plugin_identity(entry, path)
    cached = _PLUGINS.get(cache_key)
    if cached is not None:
        source, files = cached
        try:
            if _digest(list(files)) == source.sha256:
                return source
        except OSError:
            pass
    torch_before = "torch" in sys.modules
    _LOADING.append(name)
    _REGISTERED_BY.pop(name, None)
    try:
        if file is not None:
            if not file.is_file():
                raise ValueError(f"plugin file {entry!r} does not exist ({file})")
            module_name = f"asft_plugins.{file.stem}_{hashlib.sha256(str(file).encode()).hexdigest()[:8]}"
            spec = importlib.util.spec_from_file_location(module_name, file)
            module = importlib.util.module_from_spec(spec)
            if str(file.parent) not in sys.path:  # its sibling modules (lazily named functions) import too
                sys.path.append(str(file.parent))
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
            files, where = [file], file
        else:
            for folder in ([path] if path else []) + [os.getcwd()]:
                if importlib.util.find_spec(entry.partition(".")[0]) is None and folder not in sys.path:
                    sys.path.insert(0, folder)  # as `python -m` would: the working folder is importable
            if entry in sys.modules and cached is not None:
                module = importlib.reload(sys.modules[entry])
            else:
                module = importlib.import_module(entry)
            if name not in _REGISTERED_BY:  # imported before it was a plugin: the modes of its own functions
                _REGISTERED_BY[name] = [m.name for m in _MODES.values() if m.source is None and (
                    getattr(m.function, "__module__", None) == entry)]
            origin = Path(module.__file__ or "")
            files = _module_files(entry) or [origin]
            where = _import_root(entry, origin)
    except ModuleNotFoundError as error:
        raise ValueError(f"plugin {entry!r}: cannot import it ({error}); give a module importable from the "
                         "working folder or PYTHONPATH, or the path of a .py file") from None
    except (SyntaxError, ImportError) as error:
        raise ValueError(f"plugin {entry!r}: {type(error).__name__}: {error}") from None
    finally:
        _LOADING.pop()
    files = [*files, *_lazy_files(name)]
    source = PluginSource(plugin=name, sha256=_digest(files), path=str(where))
    for mode_name in _REGISTERED_BY.get(name, []):
        _MODES[mode_name] = dataclasses.replace(_MODES[mode_name], source=source)
    _PLUGINS[cache_key] = (source, tuple(files))
    if not torch_before and "torch" in sys.modules:
        warnings.warn(f"plugin {entry!r} imports torch when it is imported, which makes parsing the workflow "
                      "slow; import torch inside the weight function, or register it lazily: "
                      "register_mode(name, 'module:function', hparams={...})", stacklevel=2)
    return source


def plugin_modes(source: PluginSource) -> tuple[str, ...]:
    """The modes a loaded plugin registered."""
    return tuple(_REGISTERED_BY.get(source.plugin, ()))


def ensure_plugin(mode: str, plugin: str, sha256: str, path: str | None) -> LossMode:
    """In a job: load the plugin that registers ``mode`` (from ``path`` when given) and check that it is
    the code the run's key was made with."""
    try:
        source = load_plugin(plugin, path=path)
    except ValueError as error:
        raise ValueError(f"loss mode {mode!r} comes from plugin {plugin!r}, which cannot be loaded: {error}") from None
    if mode not in plugin_modes(source):
        raise ValueError(f"plugin {plugin!r} no longer registers loss mode {mode!r}")
    if source.sha256 != sha256:
        raise ValueError(f"plugin {plugin!r} changed since the plan was made (sha256 {source.sha256[:12]}, the "
                         f"run's key has {sha256[:12]}); run the workflow again so that the plan sees the new code")
    return _MODES[mode]


# --------------------------------------------------------------------------------------------------
# The modes: one pure function each, stats -> detached weights (N,)
# --------------------------------------------------------------------------------------------------


@register_mode("sft+kl", uses_kl=True, description="SFT + kl_weight * KL to the reference (the paper's SFT+KL ablation).")
@register_mode("sft", description="SFT: token cross-entropy, w_i = 1.")
def sft_weights(stats: TokenStats) -> Tensor:
    """SFT: token cross-entropy, w_i = 1. ``sft+kl`` adds kl_weight * KL (the paper's SFT+KL ablation)."""
    return stats.ce.new_ones(stats.ce.shape)


@register_mode("asft", uses_kl=True, description="ASFT (arXiv 2509.23753): DFT + kl_weight * KL to the reference.")
@register_mode("dft", description="DFT (arXiv 2508.05629): CE weighted by the detached target probability, w_i = sg(p(y_i)).")
def dft_weights(stats: TokenStats) -> Tensor:
    """DFT (Wu et al. 2025, arXiv 2508.05629): CE weighted by the detached target probability,
    w_i = sg(p(y_i)), i.e. the loss -sg(p) * log p. ``asft`` (arXiv 2509.23753) adds kl_weight * KL."""
    return stats.p_target.detach()


@register_mode("sft-topk", batch_level=True)
def topk_weights(stats: TokenStats, *, keep: float = 0.7) -> Tensor:
    """Top-k SFT (fork doub7e/token-SFT): mean CE over the k = max(1, int(keep*n)) easiest tokens.

    Keeps tokens with CE <= the k-th smallest CE of the call's n response tokens and weights them by
    n / n_kept, so that with D = n the loss is the mean CE over the kept tokens (n_kept = k unless CE
    values tie at the threshold)."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep!r}")
    n = stats.ce.numel()
    k = max(1, int(keep * n))
    threshold = stats.ce.kthvalue(k).values
    kept = (stats.ce <= threshold).to(stats.ce.dtype)
    return kept * (n / kept.sum())


@register_mode("sft-antiop", batch_level=True)
def antiop_weights(stats: TokenStats, *, mult: float = 3.0) -> Tensor:
    """Anti-outlier SFT (fork doub7e/token-SFT): tokens with CE above cap = mult * median(CE) (the lower
    median, ``Tensor.median``) get weight cap / (CE + 1e-8), so their weighted CE is ~cap; others 1."""
    if mult <= 0:
        raise ValueError(f"mult must be > 0, got {mult!r}")
    cap = mult * stats.ce.median()
    return stats.ce.new_ones(stats.ce.shape).where(stats.ce <= cap, cap / (stats.ce + 1e-8))


@register_mode("sft-lr", needs_ref_probs=True)
def lr_weights(stats: TokenStats, *, alpha: float = 1.0) -> Tensor:
    """Likelihood-ratio SFT (fork doub7e/token-SFT), no KL term:
    w_i = clamp(1 + alpha * clamp(q(y_i) - p(y_i), -1, 1), min=0.1) with q the reference model."""
    assert stats.ref_p_target is not None
    gap = (stats.ref_p_target - stats.p_target).clamp(-1.0, 1.0)
    return (1.0 + alpha * gap).clamp(min=0.1)


def _check_number(mode: str, name: str, value: object, *, minimum: float, strict: bool = False) -> float:
    """``value`` as a finite float >= ``minimum`` (> when ``strict``), or a ValueError naming the mode's
    hyper-parameter."""
    bound = f"> {minimum}" if strict else f">= {minimum}"
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not (number > minimum or (number == minimum and not strict)) or number == float("inf"):
        raise ValueError(f"loss mode {mode!r}: {name} must be a finite number {bound}, got {value!r}")
    return number


@register_mode("asft-sft")
def dft_plus_sft_weights(stats: TokenStats, *, alpha: float = 0.1) -> Tensor:
    """DFT + alpha * SFT (arXiv 2509.23753, Figure 4: anchoring by an SFT term instead of KL, no reference).

    The loss -sg(p(y_i)) * log p(y_i) - alpha * log p(y_i) per token, i.e. w_i = sg(p(y_i)) + alpha.
    The paper sweeps alpha over {0.01, 0.05, 0.1, 0.5, 1, 5, 10} and states no single default for it;
    0.1 is ours (docs/losses.md)."""
    alpha = _check_number("asft-sft", "alpha", alpha, minimum=0.0)
    return stats.p_target.detach() + alpha


@register_mode("iw-sft", needs_ref_probs=True, batch_level=True)
def importance_weights(stats: TokenStats, *, temp: float = 1.0, max_weight: float = 16.0) -> Tensor:
    """Importance-weighted SFT (Qin & Springenberg 2025, arXiv 2507.12856), as emmyqin/iw_sft computes it.

    One detached weight per sequence, given to all its response tokens:
    w = clamp(exp(temp * mean_t (log p(y_t) - log q(y_t))), 0, max_weight) with q the frozen reference
    (base) model and the mean over the sequence's response tokens (upstream ``IwSFTLoss`` with
    ``sum_over_time=True, temp=1.0``, clamp to [0, 16]; docs/losses.md)."""
    temp = _check_number("iw-sft", "temp", temp, minimum=0.0)
    max_weight = _check_number("iw-sft", "max_weight", max_weight, minimum=0.0, strict=True)
    assert stats.ref_p_target is not None and stats.seq is not None
    diff = stats.ce.neg() - stats.ref_p_target.log()  # (N,) log p(y) - log q(y), as upstream: log of q
    rows = int(stats.seq.max().item()) + 1
    total = diff.new_zeros(rows).index_add_(0, stats.seq, diff)  # per sequence
    count = diff.new_zeros(rows).index_add_(0, stats.seq, diff.new_ones(diff.shape))
    iw = (temp * (total / count.clamp(min=1.0))).exp().clamp(0.0, max_weight)  # (rows,)
    return iw.index_select(0, stats.seq).detach()
