"""Option bundles: a dataclass declares a group of options once, and every command that takes
the bundle gets all of them, with the same flags, help text and defaults.

    @dataclass(frozen=True)
    class OutputFlags:
        json_output: JsonOption = False
        quiet: QuietOption = False

    @expand_bundles
    def inspect(model: ModelArgument, *, out: OutputFlags) -> None:
        ...

Typer sees ``inspect(model, *, json_output=False, quiet=False)``; the function is called with
``out=OutputFlags(json_output=..., quiet=...)``. Nothing here knows any particular option.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from typing import Any, Callable


def is_bundle(annotation: Any) -> bool:
    """A dataclass type used as a parameter's annotation stands for its fields."""
    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation)


def bundle_parameters(bundle: type) -> list[inspect.Parameter]:
    """The bundle's fields as keyword-only parameters (their Annotated type, their default)."""
    hints = typing.get_type_hints(bundle, include_extras=True)
    return [inspect.Parameter(item.name, inspect.Parameter.KEYWORD_ONLY, default=item.default,
                              annotation=hints[item.name])
            for item in dataclasses.fields(bundle)]


def expand_bundles(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` with every bundle-annotated parameter replaced by the bundle's fields in
    its signature (what Typer reads); calls rebuild the bundles from those fields."""
    hints = typing.get_type_hints(function, include_extras=True)
    parameters: list[inspect.Parameter] = []
    bundles: dict[str, tuple[type, list[str]]] = {}
    for parameter in inspect.signature(function).parameters.values():
        annotation = hints.get(parameter.name, parameter.annotation)
        if is_bundle(annotation):
            fields = bundle_parameters(annotation)
            bundles[parameter.name] = (annotation, [item.name for item in fields])
            parameters.extend(fields)
        else:
            parameters.append(parameter.replace(annotation=annotation))
    names = [parameter.name for parameter in parameters]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise TypeError(f"{function.__name__}: parameter(s) {', '.join(repeated)} declared twice")

    @functools.wraps(function)
    def call(**values: Any) -> Any:
        for name, (bundle, fields) in bundles.items():
            values[name] = bundle(**{field: values.pop(field) for field in fields})
        return function(**values)

    call.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    call.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
    return call
