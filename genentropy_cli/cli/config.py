"""``--config run.yaml``: any command's options from a file; flags given on the command line win.

The file is a flat YAML mapping from option names (the long flag without ``--``; ``-`` and
``_`` are the same) and argument names to values, e.g. for ``estimate``:

    model: sample_models/mlp_small.safetensors
    latent-distribution: uniform
    scale: [0.1, 1.0e-4]
    num-samples: 20000
    json: true

A genentropy JSON result is also accepted: its ``configuration.options`` are used, so a run
can be repeated from its own output. Unknown keys and ill-typed values are one-line errors.

How it works: the ``--config`` option is eager, so it is processed before the others, and
its values become click's ``default_map`` for the command: a value from the file is used
exactly where no flag is given. ``resolved_configuration()`` reports every option's final
value and its source (flag, config or default); ``reporting`` embeds it in the JSON.

Every command that loads a model has it: ``--config`` is one of the model options
(``options.ModelFlags``).
"""

from __future__ import annotations

import importlib
import json
import typing
from pathlib import Path
from typing import Any, Mapping

import typer

from genentropy_cli.errors import InputError

CONFIG_FLAG = "--config"
_META_KEY = "genentropy.config_file"
_SOURCES = {"COMMANDLINE": "flag", "DEFAULT_MAP": "config", "DEFAULT": "default",
            "ENVIRONMENT": "environment", "PROMPT": "prompt"}
Context = Any
"""A click context (Typer >= 0.20 bundles its own click as ``typer._click``; older uses ``click``)."""
Parameter = Any


def current_context() -> Context | None:
    """The running command's context, whichever click Typer runs on; None outside the CLI."""
    for module_name in ("typer._click.globals", "click.globals"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        ctx = module.get_current_context(silent=True)
        if ctx is not None:
            return ctx
    return None


def normalise_key(key: Any) -> str:
    return str(key).strip().lstrip("-").replace("_", "-").lower()


def option_keys(command: Any) -> dict[str, Parameter]:
    """Config key -> parameter: the long flag without ``--`` for options, the name for arguments."""
    table: dict[str, Parameter] = {}
    for param in command.params:
        if CONFIG_FLAG in param.opts or not param.expose_value:
            continue
        if param.param_type_name == "option":
            long_names = [name for name in param.opts if name.startswith("--")]
            key = long_names[0] if long_names else param.opts[0]
        else:
            key = param.name or ""
        table[normalise_key(key)] = param
    return table


def read_config_file(path: str | Path, command_name: str | None = None) -> dict:
    """The option values a config file holds (a YAML mapping, or a genentropy JSON result)."""
    from genentropy_cli.models.specs import read_yaml_file  # the models layer imports torch: only when read

    file = Path(path)
    content = read_yaml_file(file, "config file")
    if content is None:
        return {}
    if not isinstance(content, Mapping):
        raise InputError(f"{file} must hold a mapping of option names to values, e.g. num-samples: 20000")
    if "genentropy_version" in content and isinstance(content.get("configuration"), Mapping):
        recorded = content["configuration"]
        if command_name and recorded.get("command") not in (None, command_name):
            raise InputError(f"{file} records a run of `{recorded.get('command')}`, not `{command_name}`")
        options = recorded.get("options") or {}
        if not isinstance(options, Mapping):
            raise InputError(f"{file}: configuration.options must be a mapping of option names to values, "
                             f"got a {type(options).__name__}")
        return {key: value for key, value in options.items() if normalise_key(key) not in RESULT_ONLY_OPTIONS}
    return dict(content)


RESULT_ONLY_OPTIONS = ("output", "config")
"""Options of a recorded run that a rerun from its result does not take: ``--output`` named the
result file itself (the very file now read as ``--config``), so repeating it would overwrite it."""

_KINDS = {bool: "boolean", int: "integer", float: "float", str: "text"}


def _value_kind(param: Parameter) -> str:
    """boolean, integer, float or text: click's type name, or the annotation that Typer's own
    click (Typer >= 0.20) keeps instead of a click type."""
    if getattr(param, "is_flag", False):
        return "boolean"
    name = getattr(getattr(param, "type", None), "name", None)
    if name:
        return str(name)
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    while typing.get_args(annotation):  # Optional[X], List[X]: the value's own type
        members = [item for item in typing.get_args(annotation) if item is not type(None)]
        annotation = members[0]
    return _KINDS.get(annotation, "")


def _check_kind(param: Parameter, key: Any, value: Any, source: str) -> None:
    """Refuse a value of the wrong kind before click converts it: click reads ``true`` as the
    integer 1 and 3.7 as 3, and a list as its text; a config file gets no such guesses."""
    kind = _value_kind(param)
    several = getattr(param, "multiple", False) or getattr(param, "nargs", 1) != 1
    items = value if several else [value]
    if not isinstance(items, (list, tuple)) or any(isinstance(item, (list, tuple, Mapping)) for item in items):
        raise InputError(f"{source}: {key}: expected {'a list of plain values' if several else 'one value'}, "
                         f"got {value!r}")
    for item in items:
        if kind == "boolean" and not isinstance(item, bool):
            raise InputError(f"{source}: {key}: expected true or false, got {item!r}")
        if kind != "boolean" and isinstance(item, bool):
            wanted = {"integer": "an integer", "float": "a number", "text": "a text value"}.get(kind, "a value")
            raise InputError(f"{source}: {key}: expected {wanted}, not {item!r}")
        if kind == "integer" and isinstance(item, float):
            raise InputError(f"{source}: {key}: expected an integer, got {item!r}")


def _joined_text(param: Parameter, value: Any) -> Any:
    """A YAML list of plain values for a one-value text option that takes a comma list on the
    command line (``classes: [2, 0]`` for ``--classes 2,0``, ``output-range: [-1, 1]``)."""
    several = getattr(param, "multiple", False) or getattr(param, "nargs", 1) != 1
    if several or _value_kind(param) != "text" or not isinstance(value, (list, tuple)):
        return value
    if any(isinstance(item, (list, tuple, Mapping, bool)) or item is None for item in value):
        return value  # refused by _check_kind with its message
    return ",".join(str(item) for item in value)


def config_defaults(ctx: Context, values: Mapping, source: str) -> dict:
    """Check ``values`` against the command's options and return them as a click default map."""
    command = ctx.command
    table = option_keys(command)
    unknown = sorted(str(key) for key in values if normalise_key(key) not in table)
    if unknown:
        raise InputError(
            f"{source}: unknown option(s) {', '.join(unknown)} for `{command.name}`; "
            f"known: {', '.join(sorted(table))}"
        )
    defaults: dict[str, Any] = {}
    for key, value in values.items():
        param = table[normalise_key(key)]
        if value is None:
            continue
        if getattr(param, "multiple", False) and not isinstance(value, (list, tuple)):
            value = [value]
        value = _joined_text(param, value)
        _check_kind(param, key, value, source)
        try:
            param.process_value(ctx, value)  # converts and checks it as if given on the command line
        except typer.BadParameter as error:
            raise InputError(f"{source}: {key}: {error.format_message()}") from None
        assert param.name is not None
        defaults[param.name] = value
    return defaults


def apply_config_file(ctx: Context, path: str | Path) -> None:
    """Make the file's values the command's defaults (flags still override them)."""
    values = read_config_file(path, ctx.info_name)
    ctx.default_map = {**(ctx.default_map or {}), **config_defaults(ctx, values, str(path))}
    ctx.meta[_META_KEY] = str(path)


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def resolved_configuration(ctx: Context | None = None) -> dict | None:
    """Every option of the running command: its final value and where it came from.

    None outside a CLI command (e.g. from the Python API). ``options`` is itself a valid
    config file for the same command.
    """
    ctx = ctx or current_context()
    if ctx is None or ctx.command is None or not ctx.params:
        return None
    options: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, param in option_keys(ctx.command).items():
        if param.name not in ctx.params:
            continue
        source = _SOURCES.get(getattr(ctx.get_parameter_source(param.name), "name", ""), "default")
        if getattr(param, "hidden", False) and source == "default":
            continue  # a deprecated alias (samples --out) is recorded only where it was used
        options[key] = _plain(ctx.params[param.name])
        sources[key] = source
    return {"command": ctx.info_name, "file": ctx.meta.get(_META_KEY), "options": options, "sources": sources}


def with_configuration(document: dict) -> dict:
    """``document`` with the running command's resolved configuration under ``configuration``."""
    if "configuration" in document:
        return document
    configuration = resolved_configuration()
    if configuration is None:
        return document
    return {**document, "configuration": json.loads(json.dumps(configuration))}
