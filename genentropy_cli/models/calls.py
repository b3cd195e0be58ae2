"""How a decoder is called: which method, with which constant keyword arguments.

Generators in the wild are not all ``g(z)``: a diffusers VAE decodes with ``vae.decode(z).sample``,
a StyleGAN generator takes ``G(z, c, truncation_psi=0.7, noise_mode="const")``, BigGAN
``G(z, class_onehot, truncation)``. A call adapter says

    method    the method to call instead of forward (``decode``)
    kwargs    constant keyword arguments (``noise_mode: const``, ``truncation: 0.4``, ``c: null``)

and the output transform (``transforms.py``, ``output.select``) says which part of what it returns
is the sample (an index, a key, or an attribute such as ``sample``). It comes from the spec's or
the model metadata's ``call:`` section, from the conventions of the code that wrote the model
(``conventions.py``), and from ``--method NAME`` / ``--call-kwarg KEY=VALUE`` (VALUE read as a
YAML scalar); each keyword remembers where it came from, flags winning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import yaml
from torch import nn

from genentropy_cli.errors import InputError

__all__ = ["CALL_KEYS", "CallAdapter", "CalledDecoder", "call_metadata", "call_section", "parse_call_kwargs",
           "resolve_call"]

CALL_KEYS: tuple[str, ...] = ("method", "kwargs")
"""Keys of a ``call:`` section."""
METHOD_KEY = "call_method"
KWARG_PREFIX = "call_kwarg:"
"""Loader metadata keys: ``call_method``, and ``call_kwarg:NAME`` per keyword (each with its own origin)."""
SCALAR_TYPES = (str, int, float, bool, type(None))
FORWARD = "forward"


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("__"):
        raise InputError(f"{what} must be a Python name such as decode or noise_mode, got {name!r}")
    return name


def _check_value(name: str, value: Any, source: str) -> Any:
    if not isinstance(value, SCALAR_TYPES):
        raise InputError(f"{source}: call keyword {name} must be a number, a string, true/false or null, got {value!r}")
    return value


def call_metadata(section: Any, source: str) -> dict:
    """A ``call:`` mapping as flat loader metadata: ``{"call_method": "decode", "call_kwarg:noise_mode": "const"}``."""
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise InputError(f"{source}: call must be a mapping with keys method, kwargs; got {section!r}")
    unknown = sorted(str(key) for key in section if key not in CALL_KEYS)
    if unknown:
        raise InputError(f"{source} (call) has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(CALL_KEYS)}")
    metadata: dict = {}
    if section.get("method") is not None:
        metadata[METHOD_KEY] = _check_name(section["method"], f"{source}: call method")
    kwargs = section.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise InputError(f"{source}: call kwargs must be a mapping such as {{noise_mode: const}}, got {kwargs!r}")
    for name, value in kwargs.items():
        metadata[KWARG_PREFIX + _check_name(name, f"{source}: a call keyword")] = _check_value(name, value, source)
    return metadata


def parse_call_kwargs(entries: Sequence[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """``--call-kwarg KEY=VALUE`` entries (or a mapping, from Python) as keywords; VALUE is read as
    a YAML scalar: ``0.7`` a number, ``const`` a string, ``null`` None, ``true`` a bool."""
    if entries is None:
        return {}
    if isinstance(entries, Mapping):
        return {_check_name(name, "--call-kwarg KEY"): _check_value(name, value, "--call-kwarg")
                for name, value in entries.items()}
    parsed: dict[str, Any] = {}
    for entry in entries:
        name, separator, text = str(entry).partition("=")
        if not separator:
            raise InputError(f"--call-kwarg takes KEY=VALUE, e.g. noise_mode=const or truncation_psi=0.7; got {entry!r}")
        name = _check_name(name.strip(), "--call-kwarg KEY")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        parsed[name] = _check_value(name, value, f"--call-kwarg {entry}")
    return parsed


@dataclass(frozen=True)
class CallAdapter:
    """Call ``decoder.<method>(z, [label], **kwargs)`` (``method`` None: the decoder itself)."""

    method: str | None = None
    kwargs: tuple[tuple[str, Any], ...] = ()

    @property
    def is_identity(self) -> bool:
        return self.method is None and not self.kwargs

    def describe(self) -> dict:
        return {"method": self.method or FORWARD, "kwargs": dict(self.kwargs)}

    def apply(self, decoder: Any) -> Any:
        """The decoder itself when called as it is, else a module calling it this way."""
        return decoder if self.is_identity else CalledDecoder(decoder, self)


class CalledDecoder(nn.Module):
    """``decoder.method(latents, *labels, **constant_kwargs, **keyword_labels)``; a module, so the
    engine copies, moves and evaluates the wrapped decoder with it."""

    def __init__(self, decoder: Any, adapter: CallAdapter):
        super().__init__()
        self.decoder = decoder
        self.adapter = adapter

    @property
    def original_name(self) -> str:
        """Names the call too: checkpoint fingerprints hash it, so a run with another truncation or
        method never resumes this one's checkpoint."""
        inner = getattr(self.decoder, "original_name", None) or type(self.decoder).__qualname__
        return f"{inner} called as {self.adapter.describe()}"

    def forward(self, latents: Any, *labels: Any, **keyword_labels: Any) -> Any:
        method = self.decoder if self.adapter.method is None else getattr(self.decoder, self.adapter.method)
        return method(latents, *labels, **dict(self.adapter.kwargs), **keyword_labels)


def call_section(adapter: CallAdapter) -> dict:
    """The adapter as the ``call:`` section files record (empty parts left out)."""
    section: dict = {}
    if adapter.method is not None:
        section["method"] = adapter.method
    if adapter.kwargs:
        section["kwargs"] = dict(adapter.kwargs)
    return section


def resolve_call(metadata: Mapping[str, Any], origins: Mapping[str, str], decoder: Any, method: str | None = None,
                 call_kwargs: Any = None, path: str = "the decoder") -> tuple[CallAdapter, dict]:
    """The call adapter from flags over what the model's files and conventions recorded, and
    where each part came from (``{"method": origin, "kwargs": {name: origin}}``)."""
    origin: dict = {"kwargs": {}}
    if method is not None:
        chosen, origin["method"] = _check_name(method, "--method"), "flag"
    else:
        chosen = metadata.get(METHOD_KEY)
        origin["method"] = origins.get(METHOD_KEY, "metadata") if chosen is not None else "default"
    kwargs: dict[str, Any] = {}
    for key, value in metadata.items():
        if key.startswith(KWARG_PREFIX):
            kwargs[key.removeprefix(KWARG_PREFIX)] = value
            origin["kwargs"][key.removeprefix(KWARG_PREFIX)] = origins.get(key, "metadata")
    for name, value in parse_call_kwargs(call_kwargs).items():
        kwargs[name], origin["kwargs"][name] = value, "flag"
    if chosen in (None, FORWARD):
        chosen = None
    elif not callable(getattr(decoder, chosen, None)):
        known = [name for name in ("decode", "forward", "generate", "sample") if callable(getattr(decoder, name, None))]
        raise InputError(f"{path} ({type(decoder).__name__}) has no method {chosen!r}"
                         + (f"; it has {', '.join(known)}" if known else "") + ": fix --method or the call: section")
    return CallAdapter(chosen, tuple(kwargs.items())), origin
