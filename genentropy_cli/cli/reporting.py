"""Rendering results as Rich tables, and the notes that go with them (``output`` prints them)."""

from __future__ import annotations

import json
import math
from typing import Sequence

from rich.table import Table

from genentropy_cli.cli.fitting import Narrowing, narrowing
from genentropy_cli.core.labels import LabelSpec
from genentropy_cli.run.planning import format_duration
from genentropy_cli.run.results import EntropyResult
from genentropy_cli.run.stopping import STOP_REASONS


def format_number(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def entropy_digits(stderr: float | None, minimum: int = 4) -> int:
    """Decimals that show the first two significant digits of the standard error (``minimum``
    at least, at most 12): a value printed to fewer would hide what the run resolves (an
    entropy difference of 0.004 with SE 0.001 is not "0.00"). An exact value gets 4: an SE below
    1e-10 is round-off (two linear decoders on shared latents differ by a constant), no sample
    size resolves that much."""
    if stderr is not None and 0 <= stderr < 1e-10:
        return max(minimum, 4)
    if stderr is None or not (stderr > 0 and math.isfinite(stderr)):
        return minimum
    return int(min(12, max(minimum, 1 - math.floor(math.log10(stderr)))))


def format_error(value: float | None) -> str:
    """Standard errors with two significant figures."""
    if value is None or not math.isfinite(value):
        return "-"
    if value == 0:
        return "0"
    return f"{value:.2g}" if value < 1e-3 or value >= 1e3 else f"{value:.{max(0, 1 - math.floor(math.log10(value)))}f}"


def format_std(value: float | None, digits: int = 4) -> str:
    """A per-sample std to ``digits`` decimals, or to two significant figures where those
    decimals would show fewer than two (``0.0000`` beside ``Std. error 2.6e-07`` hides that the
    terms vary at all)."""
    if value is None or not math.isfinite(value):
        return "-"
    if 0 < abs(value) < 10.0 ** (2 - digits):
        return format_error(value)
    return format_number(value, digits)


def latent_label(result: EntropyResult) -> str:
    return result.latent.describe()


def estimate_table(result: EntropyResult, model_path: str) -> Table:
    """One row per scale: entropy, standard error, per-sample std, 95% CI and N; the model,
    latent, time and throughput in the title and caption."""
    probe = result.precision_probe or {}
    shifts = probe.get("difference_in_stderr")
    caption = (f"latent {latent_label(result)}, D = {result.output_dim}; {result.settings['device']}, "
               f"{result.settings['dtype']}, seed {result.settings['seed']}; "
               f"{result.elapsed_seconds:.1f} s, {result.samples_per_second:,.0f} samples/s. "
               "Entropy in nats; Std = per-sample std; Std. error = Std / sqrt(N).")
    table = Table(
        title=f"Entropy of {model_path}" + (" [bold red]PARTIAL (interrupted)[/bold red]" if result.partial else ""),
        caption=caption + (f" Last column: mean change of h_i with --dtype {probe['dtype']} instead of float64 "
                           f"(first {probe['num_samples']} samples), in standard errors." if shifts else ""),
    )
    headers = ["Scale s", "Entropy", "Std. error", "Std", "95% CI", "N"]
    for header in headers + (["dtype shift"] if shifts else []):
        table.add_column(header, justify="right")
    for index, item in enumerate(result.estimates):
        digits = entropy_digits(item.stderr)
        row = [
            f"{item.scale:.0e}",
            format_number(item.entropy, digits),
            format_error(item.stderr),
            format_std(item.std),
            f"{format_number(item.ci95[0], digits)} to {format_number(item.ci95[1], digits)}",
            str(item.num_samples),
        ]
        if shifts:
            row.append(format_shift(shifts[index], probe["threshold_in_stderr"]))
        table.add_row(*row)
    return narrowing(table, Narrowing(
        short={"Std. error": "SE"}, optional=("dtype shift",) if shifts else (), legend="SE = Std. error.",
        dropped_caption=f"{caption} SE = Std. error. The dtype's shifts are under Diagnostics (precision probe)."))


def format_shift(value: float, threshold: float) -> str:
    """A precision-probe shift in standard errors, red where it exceeds the threshold."""
    if value is None or not math.isfinite(value):
        return "-"
    text = f"{value:+.2f} SE"
    return f"[red]{text}[/red]" if abs(value) > threshold else text


def format_bytes(count: int | None) -> str:
    if count is None:
        return "-"
    return f"{count / 1024**2:,.0f} MiB"


def _quantile_text(quantiles: dict | None) -> str:
    if not quantiles:
        return "-"
    return " / ".join(f"{quantiles[name]:.3g}" for name in ("min", "q01", "median", "q99", "max"))


METHOD_NOTE_CHARACTERS = 110
"""The table's share of a fallback's reason (the JSON's ``jacobian_method_note`` has all of it)."""


RADIAL_COLLAPSE_TEXT = ("the radial direction of z (the output ignores |z|, as StyleGAN's normalised z does): each h_i "
                        "holds log s, so H_s falls 2.30 nats per decade of s; compare models at one s, or take "
                        "H_s - log s - {chi:.4f} (for z ~ N(0, I): the images' entropy on their (d-1)-dim surface; "
                        "docs/method.md)")


def collapse_text(collapse: dict) -> str:
    """The diagnostics row for a decoder that always collapses the radial direction of z."""
    return RADIAL_COLLAPSE_TEXT.format(chi=collapse.get("chi_entropy") or float("nan"))


def method_text(diagnostics: dict) -> str:
    """Which Jacobian method ran and, where it is not the stacked one, why in one short line."""
    method, note = diagnostics.get("jacobian_method") or "-", diagnostics.get("jacobian_method_note")
    if not note:
        return f"{method} (one forward pass over stacked rows)" if method == "stacked" else method
    note = note.strip().splitlines()[0]
    if len(note) > METHOD_NOTE_CHARACTERS:
        note = note[: METHOD_NOTE_CHARACTERS - 3].rstrip() + "..."
    return f"{method} ({note})"


def log_det_text(diagnostics: dict) -> str:
    """The log-det path, and on the Cholesky path what the eigenvalue subsample checked."""
    log_det = diagnostics.get("log_det") or {}
    path = log_det.get("path", "eigenvalues")
    if "cholesky" not in path:
        return "eigenvalues of J^T J (every sample)"
    return (f"Cholesky of J^T J + s^2 I; singular values and collapsed directions above from "
            f"{diagnostics.get('singular_value_samples', '-')} samples (every 16th), where the two paths differed "
            f"by at most {log_det.get('max_check_difference', 0.0):.2g} nats; "
            f"{log_det.get('cholesky_fallbacks', 0)} fallback(s) to the eigenvalues")


def diagnostics_table(result: EntropyResult) -> Table:
    """Under the estimate: why the run stopped, the Jacobians' spectrum, the machine."""
    diagnostics, settings = result.diagnostics, result.settings
    table = Table(title="Diagnostics", show_header=False, title_justify="left")
    table.add_column("item", style="bold")
    table.add_column("value")
    used = result.estimates[0].num_samples if result.estimates else 0
    table.add_row("stopped", f"{STOP_REASONS.get(result.stop_reason, result.stop_reason)} "
                  f"({used} samples used, {diagnostics.get('samples_computed', '-')} computed in this run"
                  + (f", resumed at {diagnostics['resumed_from_samples']}" if diagnostics.get("resumed_from_samples") else "")
                  + ")")
    table.add_row("smallest singular value of J", f"{_quantile_text(diagnostics.get('smallest_singular_value_quantiles'))}"
                  "  (min / 1% / median / 99% / max)")
    table.add_row("largest singular value of J", f"{_quantile_text(diagnostics.get('largest_singular_value_quantiles'))}")
    collapsed = diagnostics.get("mean_collapsed_directions") or {}
    table.add_row("mean directions with lambda < s^2",
                  ", ".join(f"s={scale}: {format_number(value, 2)}" for scale, value in collapsed.items()) or "-")
    if (diagnostics.get("always_collapsed") or {}).get("radial"):
        table.add_row("always collapsed", collapse_text(diagnostics["always_collapsed"]))
    table.add_row("non-finite samples", f"{result.num_nonfinite}" + (" (skipped)" if result.num_nonfinite else ""))
    table.add_row("log-determinant", log_det_text(diagnostics))
    table.add_row("device", f"{diagnostics.get('device_name', settings['device'])} ({settings['device']}), "
                  f"decoder {diagnostics.get('decoder_dtype', settings['dtype'])}, "
                  f"{diagnostics.get('world_size', 1)} process(es)")
    table.add_row("batch / tangent chunk", f"{diagnostics.get('batch_size')} -> {diagnostics.get('batch_size_final')} / "
                  f"{diagnostics.get('tangent_chunk')} -> {diagnostics.get('tangent_chunk_final')}"
                  f" ({diagnostics.get('oom_retries', 0)} out-of-memory retries)")
    table.add_row("peak memory", f"{format_bytes(diagnostics.get('peak_memory_bytes'))} "
                  f"({diagnostics.get('peak_memory_kind', '-')})")
    table.add_row("Jacobian method", method_text(diagnostics))
    probe = result.precision_probe
    if probe is None:
        table.add_row("precision probe", "not needed: the decoder ran in float64")
    elif probe.get("skipped"):
        table.add_row("precision probe", f"skipped: {probe['skipped']}")
    else:
        verdict = (f"exceeds {probe['threshold_in_stderr']:g} SE: use --dtype {probe['suggested_dtype']}"
                   if probe["flagged"] else f"within {probe['threshold_in_stderr']:g} SE")
        table.add_row("precision probe", f"{probe['dtype']} vs float64 on the first {probe['num_samples']} samples: "
                      + ", ".join(f"s={scale:g}: {format_shift(value, probe['threshold_in_stderr'])}"
                                  for scale, value in zip(probe["scales"], probe["difference_in_stderr"]))
                      + f" ({verdict})")
    return table


def partial_note(result: EntropyResult) -> str | None:
    if not result.partial:
        return None
    where = f"; rerun the same command to resume from {result.settings['checkpoint']}" if result.settings.get("checkpoint") else ""
    return f"interrupted: the result is PARTIAL ({result.estimates[0].num_samples} samples){where}"


def nonfinite_note(result: EntropyResult) -> str | None:
    if not result.num_nonfinite:
        return None
    shown = ", ".join(str(index) for index in result.nonfinite_indices[:10])
    more = " ..." if result.num_nonfinite > 10 else ""
    return f"skipped {result.num_nonfinite} non-finite sample(s) (indices {shown}{more}); N counts the rest"


def _field_table(title: str, rows: Sequence[tuple[str, str]], caption: str | None = None) -> Table:
    table = Table(title=title, caption=caption, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for name, value in rows:
        table.add_row(name, value)
    return table


def _sources(mapping: dict) -> str:
    return ", ".join(f"{key} from {value}" for key, value in mapping.items()) or "-"


def _transform_label(transform: dict) -> str:
    parts = []
    if transform.get("select") is not None:
        parts.append(f"select {transform['select']}")
    if transform.get("range") is not None:
        low, high = transform["range"]
        parts.append(f"[{low:g}, {high:g}] -> [0, 1]")
    return ", ".join(parts) or "none"


def _call_label(call: dict) -> str:
    """``decode(z, noise_mode='const')``-style, with where the keywords came from."""
    arguments = ", ".join(["z", *(f"{name}={value!r}" for name, value in call["kwargs"].items())])
    origins = sorted({origin for origin in call["source"].get("kwargs", {}).values()}
                     | ({call["source"]["method"]} if call["source"].get("method") not in (None, "default") else set()))
    return f"{call['method']}({arguments})" + (f" ({'; '.join(origins)})" if origins else "")


def _selection_label(selection: dict) -> str:
    return ", ".join(f"{name} {value}" for name, value in selection.items())


def label_text(label: dict) -> str:
    """A JSON label record in words: classes, format, how it is passed, p(y)."""
    return LabelSpec(**{key: label.get(key) for key in ("num_classes", "format", "argument", "weights",
                                                         "classes")}).describe()


def inspect_table(report: dict) -> Table:
    """``genentropy inspect``: one row per fact."""
    model, probe, parameters = report["model"], report["jacobian_probe"], report["parameters"]
    ranks = probe["rank_at_scale"]
    rows = [
        ("format", model["format"] + (" (runs code from the file: trusted sources only)"
                                      if model["runs_code_from_file"] else "")),
        ("architecture", str(model.get("architecture") or "-")),
        ("spec", str(model.get("spec_source") or "-")),
        *([("selected", _selection_label(model["selected"]))] if model.get("selected") else []),
        *([("local file", model["file"])] if model.get("file") else []),
        ("parameters", f"{parameters['count']:,} ({', '.join(parameters['dtypes']) or '-'}); "
                       f"buffers {parameters['buffers']:,}"),
        ("latent", f"{'x'.join(str(size) for size in model['latent_shape'])} {model['latent_distribution']} "
                   f"(d = {model['latent_dim']}; {_sources(model['latent_source'])})"),
        *([("label", f"{label_text(model['label'])} ("
                     + _sources({key: value for key, value in model["label"]["source"].items() if value != "default"})
                     + f"); probed at class {probe['label']}")] if model.get("label") else []),
        ("output", f"{'x'.join(str(size) for size in model['output_shape'])} (D = {model['output_dim']})"),
        *([("call", _call_label(model["call"]))] if model.get("call") else []),
        ("output transform", _transform_label(model["output_transform"])),
        *([("convention", model["convention"])] if model.get("convention") else []),
        ("forward time", f"{report['forward_seconds_per_sample'] * 1e6:,.1f} us/sample "
                         f"({report['timing']['device']}, {report['timing']['dtype']}, batch {report['timing']['batch']})"),
        *([(f"predicted time for {report['predicted_run_time']['num_samples']:,} samples",
            f"about {format_duration(report['predicted_run_time']['seconds'])} on this machine "
            f"({report['predicted_run_time']['seconds_per_sample']:.3g} s/sample)")]
          if report.get("predicted_run_time") else []),
        *([("plan", _plan_label(report["plan"]))] if report.get("plan") else []),
        ("singular values", f"{probe['smallest_singular_value']:.3g} to {probe['largest_singular_value']:.3g} "
                            f"over {probe['num_latents']} latents"),
        (f"rank at s = {probe['scale']:g}", f"{min(ranks)} to {max(ranks)} of d = {probe['latent_dim']}"),
        *([("always collapsed", collapse_text(probe["always_collapsed"]))]
          if (probe.get("always_collapsed") or {}).get("radial") else []),
    ]
    return _field_table(f"Model {model['path']}", rows)


def _plan_label(plan: dict) -> str:
    """'batch 1, tangent chunk 12 (within --max-memory 8.0 GB)': the probes' plan, a run's."""
    within = (f"within --max-memory {format_bytes(plan['max_memory'])}" if plan.get("max_memory")
              else "default memory budget")
    return f"batch {plan['batch_size']}, tangent chunk {plan['tangent_chunk']} ({within})"


def checkpoint_tables(contents: dict, path: str) -> list[Table]:
    """``inspect`` of a checkpoint: its sub-models with the flag and spec lines that choose each,
    then its other entries."""
    fits = any(candidate["fits_spec"] is not None for candidate in contents["candidates"])
    models = Table(title=f"Sub-models in {path}", caption="Choose one with --select, or with the weights: line "
                   "in the spec (beside architecture/import, kwargs, latent).")
    for header in ["--select", "what", "tensors", "values"] + (["fits spec"] if fits else []) + ["spec lines"]:
        models.add_column(header, justify="right" if header in ("tensors", "values") else "left")
    for candidate in contents["candidates"]:
        what = candidate["kind"] + (f" {candidate['class']}" if candidate["class"] else "")
        row = [candidate["select"] or "(the whole file)", what, f"{candidate['tensors']:,}", f"{candidate['values']:,}"]
        if fits:
            row.append({True: "yes", False: "no", None: "-"}[candidate["fits_spec"]])
        models.add_row(*row, candidate["spec_lines"] or "(none needed)")
    tables = [models]
    if contents["other_entries"]:
        others = Table(title="Other entries (not models)")
        for header in ("key", "kind", "value"):
            others.add_column(header)
        for entry in contents["other_entries"]:
            others.add_row(entry["key"], entry["kind"], entry["detail"])
        if contents["other_entries_not_shown"]:
            others.caption = f"{contents['other_entries_not_shown']} more not shown"
        tables.append(others)
    return tables


def convert_table(report: dict) -> Table:
    """``genentropy convert``: what was written and how it was checked."""
    spec = report["spec"]
    rows = [
        ("source", f"{report['source']['path']} ({report['source']['format']})"),
        ("written", f"{report['target']} ({report['bytes']:,} bytes)"),
        ("architecture", str(spec.get("architecture") or f"import {spec.get('import')}")),
        ("kwargs", json.dumps(spec.get("kwargs") or {})),
        ("latent", f"{'x'.join(str(size) for size in spec['latent']['shape'])} {spec['latent']['distribution']}"),
        ("output transform", json.dumps(spec.get("output")) if spec.get("output") else "none"),
        ("tensors", f"{report['tensors']} ({report['parameters']:,} values), identical after reload: "
                    f"{'yes' if report['weights_identical'] else 'no'}"),
        ("outputs", f"max relative difference after reload {report['max_relative_output_difference']:.3g}"),
    ]
    return _field_table("Converted to self-describing safetensors", rows)
