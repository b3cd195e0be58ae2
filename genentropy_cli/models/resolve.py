"""From what the user points at (a file and options) to a decoder ready for the engine.

    ModelOptions(path, spec, code_path, trust_pickle, select, class_map, latent_*, label_*, output_*,
                 method, call_kwargs)
        --resolve_model--> ResolvedModel(decoder called as its call adapter says, with its output
        transform, latent spec, label spec, and where each came from)

Precedence for the latent spec, the label spec (``models.labels``), the call (``models.calls``)
and the output transform: flags, then the spec file (``--spec`` or the sidecar), then what the
model file embeds, then the conventions of the code that wrote it (``models.conventions``), then
defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from genentropy_cli.core.labels import LabelSpec
from genentropy_cli.core.latents import LatentSpec, parse_latent_shape
from genentropy_cli.errors import InputError
from genentropy_cli.models.calls import CallAdapter, resolve_call
from genentropy_cli.models.labels import resolve_label_spec
from genentropy_cli.models.loading import LoadedModel, load_model, resolve_latent_spec
from genentropy_cli.models.transforms import OutputTransform, parse_output_range, parse_output_select


def _refuse_class_choices_without_a_label(loaded: LoadedModel, options: "ModelOptions") -> None:
    """``--classes`` or ``--class-weights`` for a model that declares no class label anywhere and
    is given no label flag: it is not conditional, which is what the user needs to hear."""
    chosen = [flag for flag, value in (("--classes", options.classes), ("--class-weights", options.class_weights))
              if value is not None]
    declared = any(key.startswith("label_") and value is not None for key, value in loaded.metadata.items())
    given = (options.num_classes, options.label_format, options.label_arg)
    if chosen and not declared and all(value is None for value in given):
        raise InputError(f"{chosen[0]} is for a conditional model, but {loaded.path} is unconditional (it declares no "
                         f"class label): leave {chosen[0]} out, or give --num-classes K if its decoder does take one")


@dataclass
class ModelOptions:
    """Everything that says which decoder to run and how (the CLI's model options)."""

    path: str | Path
    spec: str | Path | None = None
    code_path: Sequence[str | Path] = ()
    trust_pickle: bool = False
    select: str | None = None
    class_map: Sequence[str] = ()
    latent_dim: int | None = None
    latent_shape: str | Sequence[int] | None = None
    latent_distribution: str | None = None
    output_range: str | Sequence[float] | None = None
    output_select: str | int | None = None
    num_classes: int | None = None
    label_format: str | None = None
    label_arg: str | None = None
    class_weights: str | Sequence[float] | None = None
    classes: str | Sequence[int] | None = None
    method: str | None = None
    """The decoder's method to call instead of forward (``decode``)."""
    call_kwargs: Sequence[str] | Mapping[str, Any] | None = None
    """Constant keyword arguments: ``KEY=VALUE`` strings (VALUE a YAML scalar) or a mapping."""


@dataclass
class ResolvedModel:
    """A loaded model with its latent spec and output transform settled.

    ``decoder`` already applies the transform; ``loaded.decoder`` is the model as stored.
    Has ``path``, ``format``, ``metadata`` and ``describe()`` like ``LoadedModel``.
    """

    loaded: LoadedModel
    latent: LatentSpec
    latent_origin: dict
    transform: OutputTransform
    transform_origin: dict = field(default_factory=dict)
    label: LabelSpec | None = None
    """The label input of a conditional decoder g(z, y); None for a decoder of z alone."""
    label_origin: dict = field(default_factory=dict)
    call: CallAdapter = field(default_factory=CallAdapter)
    """How the decoder is called (method, constant keywords)."""
    call_origin: dict = field(default_factory=dict)

    @property
    def decoder(self) -> Any:
        """The stored model called as ``call`` says, then the output transform."""
        return self.transform.apply(self.call.apply(self.loaded.decoder))

    @property
    def path(self) -> str:
        return self.loaded.path

    @property
    def format(self) -> str:
        return self.loaded.format

    @property
    def metadata(self) -> dict:
        return self.loaded.metadata

    def describe(self) -> dict:
        """The JSON ``model`` record: file, format, spec source, latent origin, transform."""
        description = self.loaded.describe()
        description["latent_source"] = dict(self.latent_origin)
        description["call"] = {**self.call.describe(), "source": dict(self.call_origin)}
        description["output_transform"] = {**self.transform.describe(), "source": dict(self.transform_origin)}
        if self.label is not None:
            description["label"] = {**self.label.to_dict(), "probabilities": list(self.label.probabilities),
                                    "source": dict(self.label_origin)}
        return description


def _resolve_transform(loaded: LoadedModel, output_range: Any, output_select: Any) -> tuple[OutputTransform, dict]:
    origin: dict = {}
    values = {}
    for key, flag in (("output_range", output_range), ("output_select", output_select)):
        if flag is not None:
            values[key], origin[key.removeprefix("output_")] = flag, "flag"
        elif loaded.metadata.get(key) is not None:
            values[key] = loaded.metadata[key]
            origin[key.removeprefix("output_")] = loaded.origins.get(key, "metadata")
    transform = OutputTransform(parse_output_range(values.get("output_range")),
                                parse_output_select(values.get("output_select")))
    return transform, origin


RECORDED_BY = {"spec": "the spec file records", "architecture": "the architecture records",
               "program": "the model's program takes"}
"""How a warning names where a recorded value came from (anything else: "the file records")."""


def _recorded(loaded: LoadedModel, key: str) -> tuple[Any, str] | None:
    """The value ``loaded`` records for ``key`` and who records it, or None."""
    value = loaded.metadata.get(key)
    if value is None:
        return None
    return value, RECORDED_BY.get(loaded.origins.get(key, "metadata"), "the file records")


def contradiction_warnings(loaded: LoadedModel, latent: LatentSpec, options: ModelOptions) -> list[str]:
    """A flag that contradicts what the model's files record is allowed (flags win), but said:
    a uniform latent read as normal moves the estimate by tens of nats, silently otherwise."""
    from genentropy_cli.core.latents import distribution_label, parse_distribution

    messages = []
    shape = _recorded(loaded, "latent_shape")
    if shape is not None and (options.latent_dim is not None or options.latent_shape is not None):
        recorded = tuple(int(size) for size in shape[0])
        if recorded != tuple(latent.shape):
            flag = (f"--latent-dim {options.latent_dim}" if options.latent_dim is not None
                    else f"--latent-shape {'x'.join(str(size) for size in latent.shape)}")
            messages.append(f"{flag}: {shape[1]} {'x'.join(str(size) for size in recorded)}; using the flag's value")
    distribution = _recorded(loaded, "latent_distribution")
    if distribution is not None and options.latent_distribution is not None:
        recorded_label = distribution_label(parse_distribution(distribution[0]))
        if recorded_label != distribution_label(latent.distribution):
            messages.append(f"--latent-distribution {options.latent_distribution}: {distribution[1]} {recorded_label}; "
                            "using the flag's value (the entropy depends on it)")
    for key, flag in (("output_range", options.output_range), ("output_select", options.output_select)):
        recorded_value = _recorded(loaded, key)
        if recorded_value is None or flag is None:
            continue
        parse = parse_output_range if key == "output_range" else parse_output_select
        wanted, recorded_parsed = parse(flag), parse(recorded_value[0])
        if wanted != recorded_parsed:
            shown = ("none" if recorded_parsed is None else ",".join(f"{bound:g}" for bound in recorded_parsed)
                     if key == "output_range" else str(recorded_parsed))
            messages.append(f"--{key.replace('_', '-')} {flag}: {recorded_value[1]} {shown}; using the flag's value")
    return messages


def resolve_model(options: ModelOptions) -> ResolvedModel:
    """Load the model and settle its latent spec, label spec and output transform (flags win)."""
    loaded = load_model(options.path, spec=options.spec, code_path=tuple(options.code_path),
                        trust_pickle=options.trust_pickle, select=options.select, class_map=tuple(options.class_map))
    shape = options.latent_shape
    if isinstance(shape, str):
        shape = parse_latent_shape(shape)
    latent, latent_origin = resolve_latent_spec(
        loaded, options.latent_dim, tuple(shape) if shape is not None else None, options.latent_distribution)
    transform, transform_origin = _resolve_transform(loaded, options.output_range, options.output_select)
    loaded.warnings.extend(contradiction_warnings(loaded, latent, options))
    _refuse_class_choices_without_a_label(loaded, options)
    label, label_origin = resolve_label_spec(loaded, num_classes=options.num_classes, label_format=options.label_format,
                                             label_arg=options.label_arg, class_weights=options.class_weights,
                                             classes=options.classes)
    call, call_origin = resolve_call(loaded.metadata, loaded.origins, loaded.decoder, options.method,
                                     options.call_kwargs, loaded.path)
    keywords = dict(call.kwargs)
    loaded.notes.extend(note for name, (value, note) in loaded.call_notes.items()
                        if name in keywords and keywords[name] == value and note not in loaded.notes)
    return ResolvedModel(loaded, latent, latent_origin, transform, transform_origin, label, label_origin, call,
                         call_origin)
