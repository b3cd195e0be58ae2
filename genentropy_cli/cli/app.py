"""The `genentropy` command line: parse, call the API, render. No numerics here."""

from __future__ import annotations

import sys
from typing import Annotated, Callable, List, Optional

import typer
from rich.markup import escape

from genentropy_cli import __version__
from genentropy_cli.defaults import (
    CHECKPOINT_INTERVAL_SECONDS,
    DEFAULT_AGREEMENT_SE,
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    DEFAULT_NUM_SAMPLES,
    DEFAULT_SCALES,
    DEFAULT_SEED,
    DEFAULT_SWEEP_SCALES,
    INSPECT_PROBE_LATENTS,
    INTERRUPTED_EXIT_CODE,
    PRECISION_PROBE_SAMPLES,
    SAMPLES_DEFAULT_K,
    SAMPLES_DEFAULT_NUM_SAMPLES,
    TARGET_STDERR_MIN_SAMPLES,
)
from genentropy_cli.models.convert import convert_to_safetensors
from genentropy_cli.run.distributed import launch_rank
from genentropy_cli.run.results import EntropyResult
from genentropy_cli.jobs.estimate import estimate_entropy
from genentropy_cli.run.options import validate_scales
from genentropy_cli.envelope import envelope
from genentropy_cli.errors import GenentropyError, InputError
from genentropy_cli.jobs.inspect import inspect_model
from genentropy_cli.models.resolve import ModelOptions, ResolvedModel, resolve_model
from genentropy_cli.cli import config, reporting

app = typer.Typer(
    name="genentropy",
    help="Differential entropy of a generative model's decoder (Struminsky, Figurnov & Vetrov).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_state = {"debug": False}

# ----------------------------------------------------------------- shared options (one place)

ModelArgument = Annotated[str, typer.Argument(
    help="Decoder file: TorchScript (.pt/.pth/.ts), torch.export (.pt2), safetensors + spec, state dict + spec.",
    show_default=False)]
SpecOption = Annotated[
    Optional[str], typer.Option("--spec", help="Spec file (YAML): architecture or import, kwargs, latent, output.")
]
CodePathOption = Annotated[
    Optional[List[str]], typer.Option("--code-path", help="Directory to import a spec's `import:` class from (repeatable).")
]
TrustPickleOption = Annotated[
    bool, typer.Option("--trust-pickle", help="Load a whole pickled nn.Module (runs code from the file; trusted files only).")
]
OutputRangeOption = Annotated[
    Optional[str], typer.Option("--output-range", help="Map outputs from [LO,HI] to [0,1], e.g. -1,1 for tanh (none: off).")
]
OutputSelectOption = Annotated[
    Optional[str], typer.Option("--output-select", help="Output to use when the decoder returns a tuple/dict: INDEX or KEY.")
]
LatentDimOption = Annotated[Optional[int], typer.Option("--latent-dim", help="Latent dimension d (flat latent).")]
LatentShapeOption = Annotated[
    Optional[str], typer.Option("--latent-shape", help="Latent shape per sample, e.g. 100,1,1 (DCGAN).")
]
LatentDistributionOption = Annotated[
    Optional[str],
    typer.Option("--latent-distribution", help="normal, uniform (on [-1,1]), uniform01 or truncated-normal:PSI."),
]
ScaleOption = Annotated[
    Optional[List[float]],
    typer.Option("--scale", "-s", help=f"Regularisation scale s (repeatable). Default {DEFAULT_SCALES[0]:g}."),
]
NumSamplesOption = Annotated[int, typer.Option("--num-samples", "-n", help="Number of Monte-Carlo samples N.")]
BatchSizeOption = Annotated[Optional[int], typer.Option("--batch-size", help="Samples per batch (default: automatic).")]
TangentChunkOption = Annotated[
    Optional[int], typer.Option("--tangent-chunk", help="Jacobian columns per decoder call (default: automatic).")
]
DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
MaxMemoryOption = Annotated[
    Optional[str],
    typer.Option("--max-memory", help="Memory ceiling, e.g. 2GB or 1.5GiB (CPU: the process; GPU: PyTorch's "
                 "allocations): batch size and tangent chunk are planned to fit."),
]
DtypeOption = Annotated[
    str, typer.Option("--dtype", help="Decoder compute dtype: float64, float32, bfloat16 or float16 (Gram and statistics stay float64).")
]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed of the latent sequence.")]
SkipNonfiniteOption = Annotated[
    bool, typer.Option("--skip-nonfinite", help="Drop samples with NaN/inf terms (their count is reported).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout instead of a table.")]
OutputOption = Annotated[Optional[str], typer.Option("--output", "-o", help="Also write the JSON result to this file.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or notes on stderr.")]
TargetStderrOption = Annotated[
    Optional[float],
    typer.Option("--target-stderr", help="Stop once the standard error is at most this at every scale (-n is the cap)."),
]
MinSamplesOption = Annotated[
    int, typer.Option("--min-samples", help="With --target-stderr: never stop before this many samples.")
]
CheckpointOption = Annotated[
    Optional[str],
    typer.Option("--checkpoint", help="Save progress to FILE (atomically) and resume from it when rerun."),
]
CheckpointEveryOption = Annotated[
    float, typer.Option("--checkpoint-every", help="Seconds between checkpoint writes.")
]
PerSampleOption = Annotated[
    Optional[str],
    typer.Option("--per-sample", help="Write per-sample rows to FILE (.npy, .csv or .jsonl)."),
]
SaveLatentsOption = Annotated[
    bool, typer.Option("--save-latents", help="With --per-sample: also save each sample's latent.")
]
ProbeSamplesOption = Annotated[
    int, typer.Option("--probe-samples", help="First samples also computed in float64 to check --dtype (0: off).")
]


def _config_callback(ctx: typer.Context, value: Optional[str]) -> Optional[str]:
    """Eager: the file's values become this command's defaults before other options are read."""
    if value:
        run_guarded(lambda: config.apply_config_file(ctx, value))
    return value


ConfigOption = Annotated[
    Optional[str],
    typer.Option("--config", is_eager=True, callback=_config_callback,
                 help="YAML file of this command's options (flags override it); see README."),
]


def run_guarded(action: Callable[[], None]) -> None:
    """Run a command body: our errors become one line on stderr and their exit status."""
    try:
        action()
    except GenentropyError as error:
        if _state["debug"]:
            raise
        reporting.stderr_console.print(f"[red]error:[/red] {escape(str(error))}", soft_wrap=True, markup=True)
        raise typer.Exit(error.exit_code) from None
    except KeyboardInterrupt:
        reporting.stderr_console.print("[red]interrupted[/red]")
        raise typer.Exit(130) from None
    except typer.Exit:
        raise
    except Exception as error:  # an unexpected failure: one line unless --debug
        if _state["debug"]:
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        reporting.stderr_console.print(
            f"[red]error:[/red] unexpected failure: {type(error).__name__}: {escape(message)} (rerun with --debug for the traceback)",
            soft_wrap=True,
        )
        raise typer.Exit(1) from None


def open_model(options: ModelOptions) -> ResolvedModel:
    """Load and resolve a model; its loading warnings (e.g. a trusted pickle) go to stderr."""
    resolved = resolve_model(options)
    for message in resolved.loaded.warnings:
        reporting.warn(message)
    return resolved


def load_with_latent(model: str, latent_dim: Optional[int], latent_shape: Optional[str],
                     latent_distribution: Optional[str], **model_options):
    """(model, latent spec, latent origin); ``model_options``: spec, code_path, trust_pickle,
    output_range, output_select (see ``resolve.ModelOptions``)."""
    resolved = open_model(ModelOptions(model, latent_dim=latent_dim, latent_shape=latent_shape,
                                       latent_distribution=latent_distribution, **model_options))
    return resolved, resolved.latent, resolved.latent_origin


def emit(document: dict, json_output: bool, output: Optional[str], render: Callable[[], object]) -> None:
    """A command's result: the JSON file (--output), then the JSON document or the rendered
    table(s) on stdout."""
    if output:
        reporting.write_json(document, output)
    if json_output:
        reporting.print_json(document)
        return
    rendered = render()
    reporting.print_results(*(rendered if isinstance(rendered, (list, tuple)) else [rendered]))


def emit_result(document: dict, result: EntropyResult, output: Optional[str], json_output: bool,
                render: Callable[[], object], quiet: bool = False) -> None:
    """An estimate's results: notes on dropped samples, a partial result or a resumed run
    (stderr), then ``emit``."""
    for note in (reporting.nonfinite_note(result), reporting.partial_note(result)):
        if note:
            reporting.warn(note)
    if not quiet and result.diagnostics.get("resumed_from_samples"):
        reporting.info(f"resumed from the checkpoint at {result.diagnostics['resumed_from_samples']} samples")
    emit(document, json_output, output, render)


def _version_callback(value: bool) -> None:
    if value:
        print(f"genentropy {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    """Estimate how diverse a generative model is: the differential entropy of its decoder."""
    _state["debug"] = debug


@app.command()
def estimate(
    model: ModelArgument,
    latent_dim: LatentDimOption = None,
    latent_shape: LatentShapeOption = None,
    latent_distribution: LatentDistributionOption = None,
    scale: ScaleOption = None,
    num_samples: NumSamplesOption = DEFAULT_NUM_SAMPLES,
    batch_size: BatchSizeOption = None,
    tangent_chunk: TangentChunkOption = None,
    max_memory: MaxMemoryOption = None,
    device: DeviceOption = DEFAULT_DEVICE,
    dtype: DtypeOption = DEFAULT_DTYPE,
    seed: SeedOption = DEFAULT_SEED,
    skip_nonfinite: SkipNonfiniteOption = False,
    json_output: JsonOption = False,
    output: OutputOption = None,
    quiet: QuietOption = False,
    target_stderr: TargetStderrOption = None,
    min_samples: MinSamplesOption = TARGET_STDERR_MIN_SAMPLES,
    checkpoint: CheckpointOption = None,
    checkpoint_every: CheckpointEveryOption = CHECKPOINT_INTERVAL_SECONDS,
    per_sample: PerSampleOption = None,
    save_latents: SaveLatentsOption = False,
    probe_samples: ProbeSamplesOption = PRECISION_PROBE_SAMPLES,
    spec_file: SpecOption = None,
    code_path: CodePathOption = None,
    trust_pickle: TrustPickleOption = False,
    output_range: OutputRangeOption = None,
    output_select: OutputSelectOption = None,
    config_file: ConfigOption = None,
) -> None:
    """Estimate the entropy H_s = mean of -log p(z) + 1/2 log det(J^T J + s^2 I).

    Under torchrun the ranks share the samples and rank 0 alone prints. Ctrl-C saves the
    checkpoint, prints the partial result and exits 130.
    """

    def body() -> None:
        scales = tuple(scale) if scale else DEFAULT_SCALES
        main_rank = launch_rank() == 0
        loaded, spec, _ = load_with_latent(
            model, latent_dim, latent_shape, latent_distribution, spec=spec_file, code_path=code_path or (),
            trust_pickle=trust_pickle, output_range=output_range, output_select=output_select)
        with reporting.progress_bar("estimating", scales, enabled=not quiet and main_rank) as progress:
            result = estimate_entropy(
                loaded.decoder, spec, scales=scales, n_samples=num_samples, batch_size=batch_size,
                device=device, dtype=dtype, seed=seed, progress=progress,
                skip_nonfinite=skip_nonfinite, tangent_chunk=tangent_chunk,
                target_stderr=target_stderr, min_samples=min_samples, checkpoint=checkpoint,
                checkpoint_every=checkpoint_every, per_sample=per_sample, save_latents=save_latents,
                probe_samples=probe_samples, handle_signals=True, log=reporting.warn, max_memory=max_memory,
            )
        if main_rank:
            document = result.to_dict("estimate", model=loaded.describe())
            emit_result(document, result, output, json_output, lambda: [
                reporting.estimate_table(result, loaded.path), reporting.diagnostics_table(result)], quiet)
        if result.partial:
            raise typer.Exit(INTERRUPTED_EXIT_CODE)

    run_guarded(body)


ScalesOption = Annotated[
    Optional[str],
    typer.Option("--scales", help="Comma-separated scales (default "
                 + ",".join(f"{s:.0e}".replace("e-0", "e-") for s in DEFAULT_SWEEP_SCALES) + ", Table 1's)."),
]
ReferenceOption = Annotated[
    Optional[str],
    typer.Option("--reference", help="Known true entropy: a number, an expression such as 'log(2*pi)', "
                 "half-sphere, sphere, or model (the value the model file records)."),
]
ToleranceOption = Annotated[
    float, typer.Option("--tolerance-se", help="Scales agree when their estimates differ by at most this many "
                        "combined standard errors.")
]
PlotOption = Annotated[
    Optional[str], typer.Option("--plot", help="Also draw entropy vs s to this image (e.g. sweep.png); needs "
                                "matplotlib: pip install 'genentropy\\[plot]'.")
]


@app.command("sweep-scale")
def sweep_scale_command(
    model: ModelArgument,
    latent_dim: LatentDimOption = None,
    latent_shape: LatentShapeOption = None,
    latent_distribution: LatentDistributionOption = None,
    scales: ScalesOption = None,
    reference: ReferenceOption = None,
    tolerance_se: ToleranceOption = DEFAULT_AGREEMENT_SE,
    num_samples: NumSamplesOption = DEFAULT_NUM_SAMPLES,
    batch_size: BatchSizeOption = None,
    tangent_chunk: TangentChunkOption = None,
    max_memory: MaxMemoryOption = None,
    device: DeviceOption = DEFAULT_DEVICE,
    dtype: DtypeOption = DEFAULT_DTYPE,
    seed: SeedOption = DEFAULT_SEED,
    skip_nonfinite: SkipNonfiniteOption = False,
    json_output: JsonOption = False,
    output: OutputOption = None,
    plot: PlotOption = None,
    quiet: QuietOption = False,
    spec_file: SpecOption = None,
    code_path: CodePathOption = None,
    trust_pickle: TrustPickleOption = False,
    output_range: OutputRangeOption = None,
    output_select: OutputSelectOption = None,
    config_file: ConfigOption = None,
) -> None:
    """Estimate H_s at several scales in one pass and check convergence as s -> 0 (Table 1)."""
    from genentropy_cli.cli import plotting, sweep_report
    from genentropy_cli.jobs.sweep import parse_reference, parse_scales, sweep_scale

    def body() -> None:
        scale_values = parse_scales(scales) if scales is not None else DEFAULT_SWEEP_SCALES
        if plot:
            plotting.check_plot_target(plot)  # before the estimate, not after it
        loaded, spec, _ = load_with_latent(
            model, latent_dim, latent_shape, latent_distribution, spec=spec_file, code_path=code_path or (),
            trust_pickle=trust_pickle, output_range=output_range, output_select=output_select)
        known = parse_reference(reference, loaded.metadata) if reference is not None else None
        with reporting.progress_bar("sweeping", sorted(scale_values, reverse=True), enabled=not quiet) as progress:
            sweep = sweep_scale(
                loaded.decoder, spec, scale_values, reference=known, tolerance_se=tolerance_se,
                n_samples=num_samples, batch_size=batch_size, device=device, dtype=dtype, seed=seed,
                progress=progress, skip_nonfinite=skip_nonfinite, tangent_chunk=tangent_chunk,
                max_memory=max_memory,
            )
        if plot:
            plotting.plot_sweep(sweep, plot, title=loaded.path)
        emit_result(sweep.to_dict(model=loaded.describe()), sweep.result, output, json_output,
                    lambda: sweep_report.render_sweep(sweep, loaded.path))

    run_guarded(body)


@app.command()
def inspect(
    model: ModelArgument,
    latent_dim: LatentDimOption = None,
    latent_shape: LatentShapeOption = None,
    latent_distribution: LatentDistributionOption = None,
    spec_file: SpecOption = None,
    code_path: CodePathOption = None,
    trust_pickle: TrustPickleOption = False,
    output_range: OutputRangeOption = None,
    output_select: OutputSelectOption = None,
    probe_latents: Annotated[int, typer.Option("--probe-latents", help="Latents whose Jacobians are probed.")]
    = INSPECT_PROBE_LATENTS,
    scale: Annotated[float, typer.Option("--scale", "-s", help="Scale s at which the rank is counted.")]
    = DEFAULT_SCALES[0],
    device: DeviceOption = DEFAULT_DEVICE,
    dtype: DtypeOption = DEFAULT_DTYPE,
    seed: SeedOption = DEFAULT_SEED,
    json_output: JsonOption = False,
    output: OutputOption = None,
    config_file: ConfigOption = None,
) -> None:
    """Describe a model: format, parameters, latent spec and its source, output, speed, Jacobian probe."""

    def body() -> None:
        if probe_latents <= 0:
            raise InputError(f"--probe-latents must be positive, got {probe_latents}")
        resolved = open_model(ModelOptions(model, spec_file, code_path or (), trust_pickle, latent_dim, latent_shape,
                                           latent_distribution, output_range, output_select))
        report = inspect_model(resolved, device=device, dtype=dtype, probe_latents=probe_latents,
                               scale=validate_scales([scale])[0], seed=seed)
        emit(report, json_output, output, lambda: reporting.inspect_table(report))

    run_guarded(body)


@app.command()
def convert(
    model: ModelArgument,
    target: Annotated[str, typer.Argument(help="The .safetensors file to write (weights + embedded spec).",
                                          show_default=False)],
    latent_dim: LatentDimOption = None,
    latent_shape: LatentShapeOption = None,
    latent_distribution: LatentDistributionOption = None,
    spec_file: SpecOption = None,
    code_path: CodePathOption = None,
    trust_pickle: TrustPickleOption = False,
    output_range: OutputRangeOption = None,
    output_select: OutputSelectOption = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite TARGET if it exists.")] = False,
    json_output: JsonOption = False,
    config_file: ConfigOption = None,
) -> None:
    """Convert a model (any loadable source) into one self-describing safetensors file, checked by reloading."""

    def body() -> None:
        options = ModelOptions(model, spec_file, code_path or (), trust_pickle, latent_dim, latent_shape,
                               latent_distribution, output_range, output_select)
        report = envelope("convert", convert_to_safetensors(options, target, overwrite=force))
        for message in report["warnings"]:
            reporting.warn(message)
        emit(report, json_output, None, lambda: reporting.convert_table(report))

    run_guarded(body)


@app.command()
def compare(
    models: Annotated[List[str], typer.Argument(help="Two or more decoder files.", show_default=False)],
    latent_dim: LatentDimOption = None,
    latent_shape: LatentShapeOption = None,
    latent_distribution: LatentDistributionOption = None,
    scale: ScaleOption = None,
    num_samples: NumSamplesOption = DEFAULT_NUM_SAMPLES,
    batch_size: BatchSizeOption = None,
    tangent_chunk: TangentChunkOption = None,
    device: DeviceOption = DEFAULT_DEVICE,
    dtype: DtypeOption = DEFAULT_DTYPE,
    seed: SeedOption = DEFAULT_SEED,
    skip_nonfinite: SkipNonfiniteOption = False,
    independent_latents: Annotated[bool, typer.Option(
        "--independent-latents",
        help="Give each model its own latents (a check: paired SE then matches unpaired SE).")] = False,
    json_output: JsonOption = False,
    output: OutputOption = None,
    quiet: QuietOption = False,
) -> None:
    """Estimate several models on the same latents; rank them and test every difference."""

    def body() -> None:
        from genentropy_cli.jobs.compare import compare_models
        from genentropy_cli.cli.tables import model_names, models_table, pairs_table

        if len(models) < 2:
            raise InputError("compare needs at least two model files")
        scales = tuple(scale) if scale else DEFAULT_SCALES
        loaded = [load_with_latent(path, latent_dim, latent_shape, latent_distribution) for path in models]
        names = model_names(models)
        with reporting.progress_bar("comparing", scales, enabled=not quiet) as progress:
            result = compare_models(
                [item[0].decoder for item in loaded], [item[1] for item in loaded], names=names, scales=scales,
                n_samples=num_samples, batch_size=batch_size, device=device, dtype=dtype, seed=seed,
                progress=progress, shared_latents=not independent_latents, skip_nonfinite=skip_nonfinite,
                tangent_chunk=tangent_chunk,
            )
        for model, (item, _, _) in zip(result.models, loaded):
            model.info.update(item.describe())
        for message in result.warnings:
            reporting.warn(message)
        document = result.to_dict()
        if output:
            reporting.write_json(document, output)
        if json_output:
            reporting.print_json(document)
            return
        reporting.print_results(*[table for scale_index in range(len(scales))
                                  for table in (models_table(result, scale_index), pairs_table(result, scale_index))])

    run_guarded(body)


@app.command()
def samples(
    model: ModelArgument,
    lowest: Annotated[int, typer.Option("--lowest", help="How many lowest-term samples (dense regions).")] = SAMPLES_DEFAULT_K,
    highest: Annotated[int, typer.Option("--highest", help="How many highest-term samples (sparse regions).")] = SAMPLES_DEFAULT_K,
    out: Annotated[Optional[str], typer.Option("--out", help="Image grid to write (PNG, PDF or SVG).")] = None,
    latent_dim: LatentDimOption = None,
    latent_shape: LatentShapeOption = None,
    latent_distribution: LatentDistributionOption = None,
    scale: Annotated[float, typer.Option("--scale", "-s", help="Regularisation scale s of the terms.")] = DEFAULT_SCALES[0],
    num_samples: NumSamplesOption = SAMPLES_DEFAULT_NUM_SAMPLES,
    batch_size: BatchSizeOption = None,
    tangent_chunk: TangentChunkOption = None,
    device: DeviceOption = DEFAULT_DEVICE,
    dtype: DtypeOption = DEFAULT_DTYPE,
    seed: SeedOption = DEFAULT_SEED,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Show the outputs with the lowest and highest per-sample entropy terms h_i = -log p(x_i)."""

    def body() -> None:
        from genentropy_cli.cli.grids import save_extremes_grid
        from genentropy_cli.jobs.samples import find_extreme_samples
        from genentropy_cli.cli.tables import samples_table

        if out is None and not json_output:
            raise InputError("say where the grid goes with --out grid.png (or pass --json for the indices and terms)")
        loaded, spec, _ = load_with_latent(model, latent_dim, latent_shape, latent_distribution)
        with reporting.progress_bar("scanning", [], enabled=not quiet) as progress:
            result = find_extreme_samples(
                loaded.decoder, spec, lowest=lowest, highest=highest, scale=scale, n_samples=num_samples,
                batch_size=batch_size, device=device, dtype=dtype, seed=seed, progress=progress,
                tangent_chunk=tangent_chunk,
            )
        if result.num_nonfinite:
            reporting.warn(f"skipped {result.num_nonfinite} sample(s) with non-finite terms")
        document = result.to_dict(model=loaded.describe())
        if out is not None:
            document["grid"] = save_extremes_grid(result, out, f"{loaded.path}: lowest and highest entropy terms")
            if not quiet:
                reporting.info(f"wrote {document['grid']}")
        if json_output:
            reporting.print_json(document)
        else:
            reporting.print_results(samples_table(result, loaded.path))

    run_guarded(body)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="genentropy")


if __name__ == "__main__":
    sys.exit(main())
