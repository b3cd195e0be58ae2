"""Property-based tests (hypothesis) of every parser of user text.

For each parser: what it accepts it reads exactly (round trips against an independent
formatting of the value), and any other text, however odd, is refused with an InputError,
never another exception, a hang or a silently different value. ``max_examples`` stays modest:
the suite runs on two shared cores.
"""

from __future__ import annotations

import math
import re
import string

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from genentropy_cli.core.latents import LatentDistribution, distribution_label, parse_distribution, parse_latent_shape
from genentropy_cli.errors import InputError
from genentropy_cli.jobs.sweep import evaluate_constant_expression, parse_scales
from genentropy_cli.models.specs import MAX_YAML_VALUES, latent_metadata, parse_yaml, spec_metadata, validate_spec
from genentropy_cli.models.transforms import parse_output_range, parse_output_select
from genentropy_cli.run.options import MAX_SCALE, MIN_SCALE, validate_scales
from genentropy_cli.run.planning import parse_memory_size

SETTINGS = settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
"""No example database: nothing is written into the repository."""
ODD_TEXT = st.text(alphabet=string.printable + "_,x٣３ﾟ\u00a0", max_size=30)
"""Text a person might type, or paste: digits, separators, underscores, unicode digits, spaces."""


def only_input_errors(parse, text):
    """``parse(text)``, or None where it raised InputError (any other exception fails the test)."""
    try:
        return parse(text)
    except InputError:
        return None


# --------------------------------------------------------------------------- latent shapes


@SETTINGS
@given(st.lists(st.integers(1, 10**6), min_size=1, max_size=5), st.sampled_from([",", "x", ", ", " x "]))
def test_latent_shapes_round_trip(sizes, separator):
    assert parse_latent_shape(separator.join(str(size) for size in sizes)) == tuple(sizes)


@SETTINGS
@given(ODD_TEXT)
def test_latent_shape_text_is_read_strictly_or_refused(text):
    shape = only_input_errors(parse_latent_shape, text)
    if shape is not None:  # accepted only as ASCII digits between single separators
        assert re.fullmatch(r"\s*[0-9]+\s*([,x]\s*[0-9]+\s*)*", text)
        assert shape == tuple(int(part) for part in re.split(r"[,x]", text)) and all(size > 0 for size in shape)


# --------------------------------------------------------------------------- scale lists


POSITIVE = st.floats(min_value=MIN_SCALE, max_value=MAX_SCALE, allow_nan=False, allow_infinity=False)


@SETTINGS
@given(st.lists(POSITIVE, min_size=1, max_size=6, unique_by=lambda value: round(math.log10(value), 6)))
def test_scale_lists_round_trip(values):
    assume(all(not math.isclose(a, b, rel_tol=1e-12) for i, a in enumerate(values) for b in values[:i]))
    assert parse_scales(",".join(repr(value) for value in values)) == tuple(sorted(values, reverse=True))


@SETTINGS
@given(ODD_TEXT)
def test_scale_text_is_read_or_refused(text):
    scales = only_input_errors(parse_scales, text)
    if scales is not None:  # read only from plain decimal numbers (no 1_0, no non-ASCII digits)
        assert all(re.fullmatch(r"\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*", piece)
                   for piece in text.split(","))
        assert scales and all(MIN_SCALE <= value <= MAX_SCALE for value in scales)
        assert list(scales) == sorted(scales, reverse=True)


@SETTINGS
@given(st.lists(st.one_of(st.floats(), st.integers(-10, 10), st.booleans(), st.text(max_size=3)), max_size=4))
def test_scale_values_from_the_api_are_valid_or_refused(values):
    scales = only_input_errors(validate_scales, values)
    if scales is not None:
        assert all(isinstance(value, float) and MIN_SCALE <= value <= MAX_SCALE for value in scales)
        assert not any(isinstance(value, (bool, str)) for value in values)


# --------------------------------------------------------------------------- memory sizes

UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KiB": 2**10, "MiB": 2**20,
         "GiB": 2**30, "TiB": 2**40}


@SETTINGS
@given(st.integers(1, 10**6), st.sampled_from(sorted(UNITS)), st.sampled_from(["", " "]))
def test_memory_sizes_round_trip(number, unit, space):
    assert parse_memory_size(f"{number}{space}{unit}") == number * UNITS[unit]
    assert parse_memory_size(f"{number}{space}{unit.lower()}") == number * UNITS[unit]


@SETTINGS
@given(ODD_TEXT)
def test_memory_size_text_is_read_or_refused(text):
    size = only_input_errors(parse_memory_size, text)
    if size is not None:
        assert isinstance(size, int) and size >= 1


# --------------------------------------------------------------------------- output ranges and selects

FINITE = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False)


@SETTINGS
@given(FINITE, FINITE)
def test_output_ranges_round_trip(low, high):
    assume(low < high and math.isfinite(1 / (high - low)))  # a width of 5e-324 has no finite scale: refused
    assert parse_output_range(f"{low!r},{high!r}") == (low, high)
    assert parse_output_range([low, high]) == (low, high)


@SETTINGS
@given(st.one_of(ODD_TEXT, st.lists(st.one_of(st.floats(), st.text(max_size=3), st.none()), max_size=3)))
def test_output_range_text_is_read_or_refused(value):
    parsed = only_input_errors(parse_output_range, value)
    if parsed is not None:
        low, high = parsed
        assert math.isfinite(low) and math.isfinite(high) and low < high and math.isfinite(1 / (high - low))


@SETTINGS
@given(st.one_of(ODD_TEXT, st.integers(), st.none(), st.booleans()))
def test_output_select_never_fails(value):
    selected = parse_output_select(value)
    assert selected is None or isinstance(selected, (int, str))


# --------------------------------------------------------------------------- reference expressions


@st.composite
def arithmetic(draw, depth: int = 3):
    """An expression of positive numbers, + - * ( ), with its value computed independently."""
    if depth == 0 or draw(st.booleans()):
        value = draw(st.integers(1, 1000))
        return str(value), float(value)
    left, left_value = draw(arithmetic(depth - 1))
    right, right_value = draw(arithmetic(depth - 1))
    operator = draw(st.sampled_from("+-*"))
    value = {"+": left_value + right_value, "-": left_value - right_value, "*": left_value * right_value}[operator]
    return f"({left} {operator} {right})", value


@SETTINGS
@given(arithmetic())
def test_reference_arithmetic_is_evaluated_exactly(expression):
    text, value = expression
    assert evaluate_constant_expression(text) == pytest.approx(value, rel=1e-12, abs=1e-9)


@SETTINGS
@given(st.text(alphabet=string.ascii_letters + string.digits + "+-*/().,_'\"[]{}:=<>%^&|~ ", max_size=60))
def test_reference_text_is_a_finite_number_or_refused(text):
    value = only_input_errors(evaluate_constant_expression, text)
    assert value is None or (isinstance(value, float) and math.isfinite(value))


@pytest.mark.parametrize("text", ["9**9**9", "10**400", "exp(1000)", "__import__('os')", "().__class__", "1 if 1 else 2",
                                  "lambda: 1", "[1][0]", "log(-1)", "1/0", "2^3", "(" * 200 + "1" + ")" * 200])
def test_reference_edge_cases_are_refused(text):
    with pytest.raises(InputError):
        evaluate_constant_expression(text)


# --------------------------------------------------------------------------- latent distributions


@SETTINGS
@given(ODD_TEXT)
def test_distribution_names_are_read_or_refused(text):
    distribution = only_input_errors(parse_distribution, text)
    if distribution is not None:
        assert isinstance(distribution, LatentDistribution)
        assert distribution_label(parse_distribution(distribution_label(distribution))) == distribution_label(distribution)


# --------------------------------------------------------------------------- config and spec files

YAML_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                         st.text(max_size=8))
YAML_VALUES = st.recursive(YAML_SCALARS, lambda children: st.one_of(
    st.lists(children, max_size=3), st.dictionaries(st.text(max_size=6), children, max_size=3)), max_leaves=8)
SPEC_KEYS = ["architecture", "import", "kwargs", "latent", "output", "weights", "description", "shape", "junk"]


@SETTINGS
@given(st.dictionaries(st.sampled_from(SPEC_KEYS), YAML_VALUES, max_size=5), st.booleans())
def test_any_spec_mapping_is_valid_or_refused(spec, strict):
    checked = only_input_errors(lambda value: validate_spec(value, "the spec", strict=strict), spec)
    if checked is not None:
        assert not ("architecture" in checked and "import" in checked)
        only_input_errors(spec_metadata, checked)  # the latent and output sections: read, or InputError
        only_input_errors(latent_metadata, checked)


@SETTINGS
@given(st.dictionaries(st.sampled_from(["shape", "distribution"]), YAML_VALUES, max_size=2))
def test_latent_sections_read_integers_only(latent):
    metadata = only_input_errors(latent_metadata, {"latent": latent})
    if metadata is not None and "latent_shape" in metadata:
        shape = latent["shape"]
        sizes = shape if isinstance(shape, list) else [shape]
        assert all(isinstance(size, int) and not isinstance(size, bool) for size in sizes)
        assert metadata["latent_shape"] == sizes


@SETTINGS
@given(YAML_VALUES)
def test_yaml_round_trips_plain_data(value):
    text = yaml.safe_dump(value)
    parsed = parse_yaml(text, "the file")
    assert parsed == value or (isinstance(value, float) and math.isnan(value)) or _has_nan(value)


def _has_nan(value) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, dict):
        return any(_has_nan(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_nan(item) for item in value)
    return False


@SETTINGS
@given(st.integers(1, 12), st.integers(1, 12))
def test_yaml_aliases_are_counted_once_expanded(levels, width):
    lines = ["a0: &a0 [x]"] + [f"a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * width)}]"
                                for level in range(1, levels)]
    expanded = sum(width ** level for level in range(levels))  # values under every anchor, each list counted
    text = "\n".join(lines) + "\n"
    if expanded * 4 < MAX_YAML_VALUES:
        assert isinstance(parse_yaml(text, "the file"), dict)
    elif expanded > 10 * MAX_YAML_VALUES:
        with pytest.raises(InputError, match="aliases"):
            parse_yaml(text, "the file")


@SETTINGS
@given(st.text(alphabet=string.printable + "&*!|>%@`", max_size=80))
def test_any_yaml_text_is_data_or_refused(text):
    only_input_errors(lambda value: parse_yaml(value, "the file"), text)


@pytest.fixture(scope="module")
def estimate_context():
    """The `estimate` command's click context, to check config values as the CLI does."""
    import typer

    from genentropy_cli.cli.app import app

    command = typer.main.get_command(app).commands["estimate"]
    return command.make_context("estimate", ["model.pt"], resilient_parsing=True)


CONFIG_KINDS = {"num-samples": "integer", "seed": "integer", "batch-size": "integer", "scale": "numbers",
                "json": "flag", "quiet": "flag", "skip-nonfinite": "flag", "target-stderr": "number",
                "checkpoint-every": "number", "dtype": "text", "latent-shape": "text", "code-path": "texts",
                "max-memory": "text"}


def _acceptable(kind: str, value) -> bool:
    """What a config value of each kind may be (written out here, not taken from the package)."""
    if kind in ("numbers", "texts"):
        items = value if isinstance(value, list) else [value]
        return all(_acceptable(kind[:-1] if kind != "numbers" else "number", item) for item in items)
    if isinstance(value, bool):
        return kind == "flag"
    if kind == "flag":
        return False
    if kind == "text" and isinstance(value, list):  # a comma list written as a YAML list: [100, 1, 1]
        return all(not isinstance(item, (list, dict, bool)) and item is not None for item in value)
    if isinstance(value, (list, dict)):
        return False
    if kind == "integer":
        return isinstance(value, (int, str))
    if kind == "number":
        return isinstance(value, (int, float, str))
    return True


@SETTINGS
@given(st.dictionaries(st.sampled_from(sorted(CONFIG_KINDS)), YAML_VALUES, min_size=1, max_size=4))
def test_config_values_are_taken_exactly_or_refused(estimate_context, values):
    from genentropy_cli.cli.config import config_defaults

    defaults = only_input_errors(lambda given: config_defaults(estimate_context, given, "run.yaml"), values)
    if defaults is None:
        return
    for key, value in values.items():
        assert value is None or _acceptable(CONFIG_KINDS[key], value), (key, value)
