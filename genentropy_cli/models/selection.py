"""Choosing the sub-model inside a checkpoint: a generator among discriminators and optimisers.

A checkpoint is a tree of dicts (and lists) whose leaves are tensors, numbers, strings and,
in trusted pickles only, whole modules. Training checkpoints hold several models in one tree:
Lightning's ``{"state_dict": {"generator.*": ..., "discriminator.*": ...}, "epoch": 3, ...}``,
the DCGAN example's ``{"netG": ..., "netD": ..., "optimizerG": ...}``, StyleGAN-style pickles
``{"G_ema": module, "D": module}``. A selection names one (a spec's ``weights:`` section):

    key           a dotted path through the tree's keys, list indices and a pickled module's
                  submodules: netG, state_dict, ema.model, G_ema.synthesis
    prefix        keep only the tensors whose names start with it, without it: "generator."
    strip_prefix  remove it from the names that have it and keep every tensor ("module.")

``--select PATH`` says key and prefix in one string: the path is followed through the tree's
keys as far as they go, and what is left names a prefix of the tensors' names
(``state_dict.generator`` is key ``state_dict``, prefix ``generator.``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import torch

from genentropy_cli.defaults import MAX_SUBMODELS
from genentropy_cli.errors import InputError
from genentropy_cli.trust import check_count

SELECTION_KEYS: tuple[str, ...] = ("key", "prefix", "strip_prefix")
"""The keys of a spec's ``weights:`` section."""
MAX_DEPTH = 6
"""How deep candidates are looked for (Lightning's state dict is at depth 1, EMA copies at 2)."""


def is_state_dict(value: Any) -> bool:
    """A non-empty mapping of names to tensors."""
    return isinstance(value, Mapping) and bool(value) and all(isinstance(item, torch.Tensor) for item in value.values())


def name_groups(state: Mapping[str, torch.Tensor]) -> dict[str, list[str]]:
    """Tensor names by their first dotted component (``generator`` -> its names), in file order."""
    groups: dict[str, list[str]] = {}
    for name in state:
        groups.setdefault(str(name).split(".", 1)[0], []).append(str(name))
    return groups


@dataclass(frozen=True)
class Candidate:
    """A sub-model found in a checkpoint: a state dict (or the part under a name prefix) or a module."""

    key: str
    prefix: str
    kind: str  # "state dict" or "module"
    tensors: int
    values: int
    class_name: str | None = None

    @property
    def select(self) -> str:
        """What ``--select`` takes to choose it ("" for the whole file)."""
        return ".".join(part for part in (self.key, self.prefix.rstrip(".")) if part)

    @property
    def weights(self) -> dict:
        """The spec's ``weights:`` section that chooses it."""
        return {name: value for name, value in (("key", self.key), ("prefix", self.prefix)) if value}


def _children(value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):
        yield from ((str(key), item) for key, item in value.items())
    elif isinstance(value, (list, tuple)):
        yield from ((str(index), item) for index, item in enumerate(value))


def _join(*parts: str) -> str:
    return ".".join(part for part in parts if part)


def _count(tensors: Sequence[torch.Tensor]) -> tuple[int, int]:
    return len(tensors), sum(tensor.numel() for tensor in tensors)


def is_optimizer_state(value: Any) -> bool:
    """An optimiser's ``state_dict()``: ``{"state": ..., "param_groups": [...]}``."""
    return isinstance(value, Mapping) and "state" in value and "param_groups" in value


def find_candidates(content: Any, key: str = "", depth: int = 0) -> list[Candidate]:
    """Every sub-model in the tree: each state dict, each of its name groups when it has more
    than one (``generator.``, ``discriminator.``), and each pickled module; not optimiser states."""
    if is_optimizer_state(content):
        return []
    if isinstance(content, torch.nn.Module):
        values = [*content.parameters(), *content.buffers()]
        return [Candidate(key, "", "module", *_count(values), class_name=type(content).__qualname__)]
    if is_state_dict(content):
        found = [Candidate(key, "", "state dict", *_count(list(content.values())))]
        groups = name_groups(content)
        check_count(len(groups), MAX_SUBMODELS, "the number of name groups (sub-models) in the state dict",
                    "name the one to load with --select KEY")
        if len(groups) > 1:
            found += [Candidate(key, f"{group}.", "state dict", *_count([content[name] for name in names]))
                      for group, names in groups.items() if any("." in name for name in names)]
        return found
    if depth >= MAX_DEPTH:
        return []
    found = []
    for name, item in _children(content):
        found += find_candidates(item, _join(key, name), depth + 1)
        check_count(len(found), MAX_SUBMODELS, "the number of sub-models in the checkpoint",
                    "name the one to load with --select KEY")
    return found


def _keys_of(value: Any) -> str:
    if isinstance(value, Mapping):
        names = [str(name) for name in list(value)[:8]]
        return "keys " + ", ".join(names) + (" ..." if len(value) > 8 else "") if names else "an empty mapping"
    return f"a {type(value).__name__}"


def _step(value: Any, parts: list[str]) -> tuple[Any, int] | None:
    """One step down the tree: the child the leading parts name (a key may itself hold dots, the
    longest match wins) and how many parts it used; None if no child matches."""
    if isinstance(value, Mapping):
        keys = {str(key): key for key in value}
        for used in range(len(parts), 0, -1):
            joined = ".".join(parts[:used])
            if joined in keys:
                return value[keys[joined]], used
    elif isinstance(value, (list, tuple)) and parts[0].isdigit() and int(parts[0]) < len(value):
        return value[int(parts[0])], 1
    elif isinstance(value, torch.nn.Module) and parts[0] in dict(value.named_children()):
        return dict(value.named_children())[parts[0]], 1
    return None


def follow_key(content: Any, key: str, source: str, *, partial: bool = False) -> tuple[Any, str, str]:
    """Follow the dotted ``key`` down the tree: (what it reaches, the key used, what is left).

    ``partial`` (``--select``): stop where the keys end; the rest is then a name prefix. Else
    every part must be a key."""
    parts = [part for part in key.split(".") if part]
    found, used = content, []
    while parts:
        step = _step(found, parts)
        if step is None:
            if partial and is_state_dict(found):
                break
            where = f" under {'.'.join(used)}" if used else ""
            raise InputError(f"{source} has no entry {'.'.join(parts)!r}{where} (selecting {key!r}); it holds "
                             f"{_keys_of(found)}: `genentropy inspect {source}` lists its sub-models")
        found, count = step
        used += parts[:count]
        parts = parts[count:]
    return found, ".".join(used), ".".join(parts)


def keep_prefix(state: Mapping[str, torch.Tensor], prefix: str, source: str) -> dict[str, torch.Tensor]:
    """The tensors named ``prefix...``, without the prefix."""
    kept = {str(name)[len(prefix):]: tensor for name, tensor in state.items() if str(name).startswith(prefix)}
    if not kept:
        groups = ", ".join(f"{group}." for group in list(name_groups(state))[:8])
        raise InputError(f"{source} has no tensors named {prefix}*; its names start with {groups}")
    return kept


def select_submodel(content: Any, weights: Mapping | None, select: str | None, source: str) -> tuple[Any, dict]:
    """The chosen sub-model (a module, or a state dict of names to tensors) and the selection
    used (``{"key", "prefix", "strip_prefix"}``, empty entries left out).

    ``select`` (the ``--select`` flag) replaces the spec's key and prefix; its strip_prefix stays.
    """
    weights = dict(weights or {})
    if select is not None:
        found, key, rest = follow_key(content, select, source, partial=True)
        prefix = f"{rest}." if rest else ""
    else:
        key, prefix = str(weights.get("key") or ""), str(weights.get("prefix") or "")
        found = follow_key(content, key, source)[0] if key else content
    chosen = {"key": key, "prefix": prefix, "strip_prefix": str(weights.get("strip_prefix") or "")}
    chosen = {name: value for name, value in chosen.items() if value}
    if isinstance(found, torch.nn.Module):
        return found, chosen
    if not is_state_dict(found):
        raise unselected(content if not key else found, source, _join(key))
    state = {str(name): tensor for name, tensor in found.items()}
    if prefix:
        state = keep_prefix(state, prefix, source)
    if chosen.get("strip_prefix"):
        state = {name.removeprefix(chosen["strip_prefix"]): tensor for name, tensor in state.items()}
    return state, chosen


def unselected(value: Any, source: str, where: str = "") -> InputError:
    """The refusal for a tree that is not one model: it names the sub-models found and the flag for each."""
    candidates = [candidate for candidate in find_candidates(value, where) if candidate.select]
    place = f"{source} ({where})" if where else source
    if not candidates:
        return InputError(f"{place} holds no model weights (a mapping of names to tensors) where expected; it holds "
                          f"{_keys_of(value)}: name the entry with --select KEY or weights: {{key: KEY}} in the spec")
    if len(candidates) == 1:
        return InputError(f"{place} is a checkpoint, not one state dict: its model weights are at "
                          f"{candidates[0].select}; pass --select {candidates[0].select} (or "
                          f"weights: {spec_weights(candidates[0])} in the spec)")
    listed = "; ".join(f"--select {candidate.select} ({candidate.tensors} tensors)" for candidate in candidates[:6])
    more = f"; {len(candidates) - 6} more" if len(candidates) > 6 else ""
    return InputError(f"{place} holds several sub-models, choose one: {listed}{more} "
                      f"(`genentropy inspect {source}` lists them with the spec lines for each)")


def spec_weights(candidate: Candidate) -> str:
    """The spec's ``weights:`` line (flow style) that chooses ``candidate``."""
    return "{" + ", ".join(f"{name}: {json.dumps(value) if value.endswith('.') else value}"
                           for name, value in candidate.weights.items()) + "}"


def matching_candidates(content: Any, expected: Mapping[str, torch.Tensor], strip_prefix: str = "") -> list[Candidate]:
    """The candidates whose tensors have exactly the names and shapes of ``expected`` (a module's
    state dict): which selection would fit the spec's architecture."""
    found = []
    for candidate in find_candidates(content):
        if candidate.kind != "state dict":
            continue
        state = follow_key(content, candidate.key, "")[0] if candidate.key else content
        names = {str(name)[len(candidate.prefix):]: tensor for name, tensor in state.items()
                 if str(name).startswith(candidate.prefix)}
        names = {name.removeprefix(strip_prefix) if strip_prefix else name: tensor for name, tensor in names.items()}
        if names.keys() == expected.keys() and all(names[name].shape == expected[name].shape for name in names):
            found.append(candidate)
    return found
