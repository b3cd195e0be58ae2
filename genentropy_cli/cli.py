"""The `genentropy` command line: parse, call the API, render. No numerics here."""

from __future__ import annotations

import sys
from typing import Annotated, Callable, List, Optional

import typer
from rich.markup import escape

from . import __version__
from .defaults import DEFAULT_DEVICE, DEFAULT_DTYPE, DEFAULT_NUM_SAMPLES, DEFAULT_SCALES, DEFAULT_SEED
from .defaults import SAMPLES_DEFAULT_K, SAMPLES_DEFAULT_NUM_SAMPLES
from .engine import estimate_entropy
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
DtypeOption = Annotated[str, typer.Option("--dtype", help="Decoder compute dtype: float32 or float64.")]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed of the latent sequence.")]
SkipNonfiniteOption = Annotated[
    bool, typer.Option("--skip-nonfinite", help="Drop samples with NaN/inf terms (their count is reported).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout instead of a table.")]
OutputOption = Annotated[Optional[str], typer.Option("--output", "-o", help="Also write the JSON result to this file.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or notes on stderr.")]


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
            f"[red]error:[/red] unexpected failure: {type(error).__name__}: {message} (rerun with --debug for the traceback)",
            soft_wrap=True,
        )
        raise typer.Exit(1) from None


def load_with_latent(model: str, latent_dim: Optional[int], latent_shape: Optional[str],
                     latent_distribution: Optional[str]):
    loaded = load_model(model)
    shape = parse_latent_shape(latent_shape) if latent_shape is not None else None
    spec, origin = resolve_latent_spec(loaded, latent_dim, shape, latent_distribution)
    return loaded, spec, origin


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
) -> None:
    """Estimate the entropy H_s = mean of -log p(z) + 1/2 log det(J^T J + s^2 I)."""

    def body() -> None:
        scales = tuple(scale) if scale else DEFAULT_SCALES
        loaded, spec, _ = load_with_latent(model, latent_dim, latent_shape, latent_distribution)
        with reporting.progress_bar("estimating", scales, enabled=not quiet) as progress:
            result = estimate_entropy(
                loaded.decoder, spec, scales=scales, n_samples=num_samples, batch_size=batch_size,
                device=device, dtype=dtype, seed=seed, progress=progress,
                skip_nonfinite=skip_nonfinite, tangent_chunk=tangent_chunk,
            )
        document = result.to_dict("estimate", model=loaded.describe())
        if output:
            reporting.write_json(document, output)
        note = reporting.nonfinite_note(result)
        if note:
            reporting.warn(note)
        if json_output:
            reporting.print_json(document)
        else:
            reporting.stdout_console.print(reporting.estimate_table(result, loaded.path))

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
        from .compare import compare_models
        from .tables import model_names, models_table, pairs_table

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
        for scale_index in range(len(scales)):
            reporting.stdout_console.print(models_table(result, scale_index))
            reporting.stdout_console.print(pairs_table(result, scale_index))

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
        from .extremes import find_extreme_samples, save_extremes_grid
        from .tables import samples_table

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
            reporting.stdout_console.print(samples_table(result, loaded.path))

    run_guarded(body)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="genentropy")


if __name__ == "__main__":
    sys.exit(main())
