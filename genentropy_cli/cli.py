"""The `genentropy` command line: parse, call the API, render. No numerics here."""

from __future__ import annotations

import sys
from typing import Annotated, Callable, List, Optional

import typer
from rich.markup import escape

from . import __version__
from .defaults import (
    CHECKPOINT_INTERVAL_SECONDS,
    DEFAULT_AGREEMENT_SE,
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    DEFAULT_NUM_SAMPLES,
    DEFAULT_SCALES,
    DEFAULT_SEED,
    DEFAULT_SWEEP_SCALES,
    INTERRUPTED_EXIT_CODE,
    PRECISION_PROBE_SAMPLES,
    TARGET_STDERR_MIN_SAMPLES,
)
from .distributed import launch_rank
from .engine import EntropyResult, estimate_entropy
from .errors import GenentropyError, InputError
from .latents import parse_latent_shape
from .loading import load_model, resolve_latent_spec
from . import reporting

app = typer.Typer(
    name="genentropy",
    help="Differential entropy of a generative model's decoder (Struminsky, Figurnov & Vetrov).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_state = {"debug": False}

# ----------------------------------------------------------------- shared options (one place)

ModelArgument = Annotated[str, typer.Argument(help="Decoder file (TorchScript .pt/.pth/.ts).", show_default=False)]
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


def load_with_latent(model: str, latent_dim: Optional[int], latent_shape: Optional[str],
                     latent_distribution: Optional[str]):
    loaded = load_model(model)
    shape = parse_latent_shape(latent_shape) if latent_shape is not None else None
    spec, origin = resolve_latent_spec(loaded, latent_dim, shape, latent_distribution)
    return loaded, spec, origin


def emit_result(document: dict, result: EntropyResult, output: Optional[str], json_output: bool,
                render: Callable[[], object], quiet: bool = False) -> None:
    """A command's results: the JSON file (--output), notes on dropped samples, a partial
    result or a resumed run (stderr), then the JSON document or the rendered tables on stdout."""
    if output:
        reporting.write_json(document, output)
    for note in (reporting.nonfinite_note(result), reporting.partial_note(result)):
        if note:
            reporting.warn(note)
    if not quiet and result.diagnostics.get("resumed_from_samples"):
        reporting.info(f"resumed from the checkpoint at {result.diagnostics['resumed_from_samples']} samples")
    if json_output:
        reporting.print_json(document)
        return
    rendered = render()
    for renderable in rendered if isinstance(rendered, (list, tuple)) else [rendered]:
        reporting.stdout_console.print(renderable)


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
) -> None:
    """Estimate the entropy H_s = mean of -log p(z) + 1/2 log det(J^T J + s^2 I).

    Under torchrun the ranks share the samples and rank 0 alone prints. Ctrl-C saves the
    checkpoint, prints the partial result and exits 130.
    """

    def body() -> None:
        scales = tuple(scale) if scale else DEFAULT_SCALES
        main_rank = launch_rank() == 0
        loaded, spec, _ = load_with_latent(model, latent_dim, latent_shape, latent_distribution)
        with reporting.progress_bar("estimating", scales, enabled=not quiet and main_rank) as progress:
            result = estimate_entropy(
                loaded.decoder, spec, scales=scales, n_samples=num_samples, batch_size=batch_size,
                device=device, dtype=dtype, seed=seed, progress=progress,
                skip_nonfinite=skip_nonfinite, tangent_chunk=tangent_chunk,
                target_stderr=target_stderr, min_samples=min_samples, checkpoint=checkpoint,
                checkpoint_every=checkpoint_every, per_sample=per_sample, save_latents=save_latents,
                probe_samples=probe_samples, handle_signals=True, log=reporting.warn,
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
    device: DeviceOption = DEFAULT_DEVICE,
    dtype: DtypeOption = DEFAULT_DTYPE,
    seed: SeedOption = DEFAULT_SEED,
    skip_nonfinite: SkipNonfiniteOption = False,
    json_output: JsonOption = False,
    output: OutputOption = None,
    plot: PlotOption = None,
    quiet: QuietOption = False,
) -> None:
    """Estimate H_s at several scales in one pass and check convergence as s -> 0 (Table 1)."""
    from . import plotting, sweep_report
    from .sweep import parse_reference, parse_scales, sweep_scale

    def body() -> None:
        scale_values = parse_scales(scales) if scales is not None else DEFAULT_SWEEP_SCALES
        if plot:
            plotting.check_plot_target(plot)  # before the estimate, not after it
        loaded, spec, _ = load_with_latent(model, latent_dim, latent_shape, latent_distribution)
        known = parse_reference(reference, loaded.metadata) if reference is not None else None
        with reporting.progress_bar("sweeping", sorted(scale_values, reverse=True), enabled=not quiet) as progress:
            sweep = sweep_scale(
                loaded.decoder, spec, scale_values, reference=known, tolerance_se=tolerance_se,
                n_samples=num_samples, batch_size=batch_size, device=device, dtype=dtype, seed=seed,
                progress=progress, skip_nonfinite=skip_nonfinite, tangent_chunk=tangent_chunk,
            )
        if plot:
            plotting.plot_sweep(sweep, plot, title=loaded.path)
        emit_result(sweep.to_dict(model=loaded.describe()), sweep.result, output, json_output,
                    lambda: sweep_report.render_sweep(sweep, loaded.path))

    run_guarded(body)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="genentropy")


if __name__ == "__main__":
    sys.exit(main())
