"""The options of every command, each declared once, in three bundles (see ``bundles``):

    ModelFlags   which decoder and how to read it (latent, label, output): every command that loads a model
    RunFlags     the batch loop's settings: estimate, sweep-scale, compare, samples
    OutputFlags  --json, --output, --quiet, --debug: every command

Defaults come from ``genentropy_cli.defaults`` (``RUN_OPTION_DEFAULTS``, whence
``EstimateOptions`` takes its own), never repeated here. The scale flag is each command's own
(``--scale`` repeatable, ``--scales a,b,c``, one ``--scale``), and so are a command's other
options; both helpers that turn flags into the API's objects are here: ``estimate_options`` and
``open_model``.

Nothing here imports torch at import time: help is rendered from typer, rich and the base
modules, and the helpers import the layers they call when called (docs/performance.md#start-up).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Callable, List, Mapping, Optional, Sequence

import typer

from genentropy_cli.cli import config
from genentropy_cli.cli.guard import run_guarded, set_debug
from genentropy_cli.defaults import (
    DEFAULT_SCALES,
    LATENT_DISTRIBUTION_HELP,
    PER_SAMPLE_FORMATS,
    RUN_OPTION_DEFAULTS,
    SAMPLES_DEFAULT_NUM_SAMPLES,
)

if TYPE_CHECKING:  # the models and run layers import torch: the helpers below import them when called
    from genentropy_cli.models.resolve import ModelOptions, ResolvedModel
    from genentropy_cli.run.options import EstimateOptions

RUN_DEFAULTS = RUN_OPTION_DEFAULTS
"""Every ``EstimateOptions`` field's default, as the flags below take them."""
MODEL_PANEL, RUN_PANEL, OUTPUT_PANEL = "Model options", "Run options", "Output options"


def _config_callback(ctx: typer.Context, value: Optional[str]) -> Optional[str]:
    """Eager: the file's values become this command's defaults before other options are read."""
    if value:
        run_guarded(lambda: config.apply_config_file(ctx, value))
    return value


def _model(*names: str, help: str, **settings) -> typer.models.OptionInfo:
    return typer.Option(*names, help=help, rich_help_panel=MODEL_PANEL, **settings)


def _run(*names: str, help: str) -> typer.models.OptionInfo:
    return typer.Option(*names, help=help, rich_help_panel=RUN_PANEL)


def _output(*names: str, help: str, **settings) -> typer.models.OptionInfo:
    return typer.Option(*names, help=help, rich_help_panel=OUTPUT_PANEL, **settings)


# ----------------------------------------------------------------- model options

ModelArgument = Annotated[str, typer.Argument(
    help="Decoder file: TorchScript (.pt/.pth/.ts), torch.export (.pt2), safetensors + spec, state dict or "
         "checkpoint + spec, ONNX (.onnx), or hf://owner/repo/FILE@REVISION (FILE and @REVISION optional).",
    show_default=False)]
ModelsArgument = Annotated[List[str], typer.Argument(
    help="Two or more decoder files (the model options apply to each).", show_default=False)]
SpecOption = Annotated[Optional[str], _model(
    "--spec", help="Spec file (YAML): architecture or import, kwargs, latent, output.")]
CodePathOption = Annotated[Optional[List[str]], _model(
    "--code-path", help="Directory to import a spec's `import:` class from (repeatable).")]
TrustPickleOption = Annotated[bool, _model(
    "--trust-pickle", help="Load a whole pickled nn.Module (runs code from the file; trusted files only).")]
SelectOption = Annotated[Optional[str], _model(
    "--select", help="Sub-model inside a checkpoint: a key path (netG, G_ema), then a name prefix "
                     "(state_dict.generator keeps state_dict's generator.* tensors); `inspect` lists them.")]
ClassMapOption = Annotated[Optional[List[str]], _model(
    "--class-map", help="With --trust-pickle: OLD=NEW, a pickled class to import from elsewhere, e.g. "
                        "__main__.Generator=mymodels:Generator with --code-path DIR (repeatable).")]
OutputRangeOption = Annotated[Optional[str], _model(
    "--output-range", help="Map outputs from [LO,HI] to [0,1], e.g. -1,1 for tanh (none: off).")]
OutputSelectOption = Annotated[Optional[str], _model(
    "--output-select", help="Output to use when the decoder returns a tuple, dict or object: INDEX, KEY or "
                            "attribute (sample for diffusers' decode).")]
MethodOption = Annotated[Optional[str], _model(
    "--method", help="The decoder's method to call instead of forward, e.g. decode (a diffusers VAE).")]
CallKwargOption = Annotated[Optional[List[str]], _model(
    "--call-kwarg", help="A constant keyword argument KEY=VALUE (VALUE a YAML scalar), e.g. truncation_psi=0.7, "
                         "noise_mode=const, c=null (repeatable).")]
LatentDimOption = Annotated[Optional[int], _model("--latent-dim", help="Latent dimension d (flat latent).")]
LatentShapeOption = Annotated[Optional[str], _model(
    "--latent-shape", help="Latent shape per sample, e.g. 100,1,1 (DCGAN).")]
LatentDistributionOption = Annotated[Optional[str], _model(
    "--latent-distribution", help="; ".join(f"{usage} ({summary})" for usage, summary in LATENT_DISTRIBUTION_HELP.items()) + ".")]
NumClassesOption = Annotated[Optional[int], _model(
    "--num-classes", help="A conditional decoder g(z, y): its number of classes K (each class is estimated).")]
LabelFormatOption = Annotated[Optional[str], _model(
    "--label-format", help="How the label is passed: index (int64 class numbers) or onehot (float rows of K).")]
LabelArgOption = Annotated[Optional[str], _model(
    "--label-arg", help="Where the label goes: position (2nd positional argument) or a keyword name, e.g. c.")]
ClassWeightsOption = Annotated[Optional[str], _model(
    "--class-weights", help="p(y): uniform, w1,w2,... (normalised), or a file of numbers, one per class.")]
ClassesOption = Annotated[Optional[str], _model(
    "--classes", help="Only these classes, e.g. 0,3,7 (the mixture is then over them).")]
ConfigOption = Annotated[Optional[str], _model(
    "--config", is_eager=True, callback=_config_callback,
    help="YAML file of this command's options (flags override it); see docs/usage.md#run-configuration.")]


@dataclass(frozen=True)
class ModelFlags:
    """Which decoder to run and how to read it (``resolve.ModelOptions`` less the path)."""

    spec: SpecOption = None
    code_path: CodePathOption = None
    trust_pickle: TrustPickleOption = False
    select: SelectOption = None
    class_map: ClassMapOption = None
    output_range: OutputRangeOption = None
    output_select: OutputSelectOption = None
    method: MethodOption = None
    call_kwarg: CallKwargOption = None
    latent_dim: LatentDimOption = None
    latent_shape: LatentShapeOption = None
    latent_distribution: LatentDistributionOption = None
    num_classes: NumClassesOption = None
    label_format: LabelFormatOption = None
    label_arg: LabelArgOption = None
    class_weights: ClassWeightsOption = None
    classes: ClassesOption = None
    config_file: ConfigOption = None

    def model_fields(self) -> dict:
        """The flags as ``ModelOptions``' keyword arguments (also those of ``jobs.files``' functions)."""
        return {item.name: getattr(self, item.name) for item in dataclasses.fields(self)
                if item.name not in ("config_file", "call_kwarg")} \
            | {"code_path": tuple(self.code_path or ()), "class_map": tuple(self.class_map or ()),
               "call_kwargs": tuple(self.call_kwarg or ())}

    def model_options(self, path: str) -> ModelOptions:
        from genentropy_cli.models.resolve import ModelOptions

        return ModelOptions(path, **self.model_fields())


def check_paths(models: Sequence[str], source: ModelFlags, report: "OutputFlags", run: EstimateOptions | None = None,
                extra: Mapping[str, str | None] | None = None) -> None:
    """Before any work: every output path (``--output``, the run's ``--checkpoint`` and
    ``--per-sample``, ``extra`` ones such as ``{"--grid": path}``) is writable, and none is another
    output or an input (a model file, its sidecar spec, ``--spec``, ``--config``); see ``run.files``."""
    from genentropy_cli.models.specs import find_sidecar
    from genentropy_cli.run.files import check_output_targets
    from genentropy_cli.run.per_sample import output_files

    targets: dict[str, str | None] = {"--output": report.output}
    if run is not None:
        targets |= {"--checkpoint": run.checkpoint, **output_files(run.per_sample)}
    targets |= dict(extra or {})
    inputs: dict[str, str | Path | None] = {"--spec file": source.spec, "--config file": source.config_file}
    for model in filter(None, models):
        inputs |= {f"model file {model}": model, f"spec beside {model}": find_sidecar(model)}
    check_output_targets(targets, inputs)


def open_model(flags: ModelFlags, path: str, warn: Callable[[str], None],
               note: Callable[[str], None] | None = None) -> ResolvedModel:
    """Load and resolve the model at ``path`` as the model options say; its loading warnings
    (e.g. a trusted pickle) go to ``warn``, its notes (what was chosen, e.g. StyleGAN's G_ema) to ``note``."""
    from genentropy_cli.models.resolve import resolve_model

    resolved = resolve_model(flags.model_options(path))
    for message in resolved.loaded.warnings:
        warn(message)
    for message in resolved.loaded.notes:
        (note or warn)(message)
    return resolved


# ----------------------------------------------------------------- run options

ScaleOption = Annotated[Optional[List[float]], _run(
    "--scale", "-s", help=f"Regularisation scale s (repeatable). Default {DEFAULT_SCALES[0]:g}.")]
NumSamplesOption = Annotated[int, _run("--num-samples", "-n", help="Number of Monte-Carlo samples N.")]
DeviceOption = Annotated[str, _run("--device", help="auto, cpu, cuda or cuda:N.")]
DtypeOption = Annotated[str, _run(
    "--dtype", help="Decoder compute dtype: float64, float32, bfloat16 or float16 (Gram and statistics stay float64).")]
SeedOption = Annotated[int, _run("--seed", help="Seed of the latent sequence.")]
BatchSizeOption = Annotated[Optional[int], _run("--batch-size", help="Samples per batch (default: automatic).")]
TangentChunkOption = Annotated[Optional[int], _run(
    "--tangent-chunk", help="Jacobian columns per decoder call (default: automatic).")]
MaxMemoryOption = Annotated[Optional[str], _run(
    "--max-memory", help="Memory ceiling, e.g. 2GB or 1.5GiB (CPU: the process; GPU: PyTorch's allocations): "
                         "batch size and tangent chunk are planned to fit.")]
SkipNonfiniteOption = Annotated[bool, _run(
    "--skip-nonfinite", help="Drop samples with NaN/inf terms (their count is reported).")]
TargetStderrOption = Annotated[Optional[float], _run(
    "--target-stderr", help="Stop once the standard error is at most this at every scale (-n is the cap).")]
MinSamplesOption = Annotated[int, _run(
    "--min-samples", help="With --target-stderr: never stop before this many samples.")]
ProbeSamplesOption = Annotated[int, _run(
    "--probe-samples", help="First samples also computed in float64 to check --dtype (0: off).")]
CheckpointOption = Annotated[Optional[str], _run(
    "--checkpoint", help="Save progress to FILE (atomically) and resume from it when rerun.")]
CheckpointEveryOption = Annotated[float, _run("--checkpoint-every", help="Seconds between checkpoint writes.")]
PerSampleOption = Annotated[Optional[str], _run(
    "--per-sample", help=f"Write per-sample rows to FILE ({', '.join(PER_SAMPLE_FORMATS)}).")]
SaveLatentsOption = Annotated[bool, _run("--save-latents", help="With --per-sample: also save each sample's latent.")]


@dataclass(frozen=True)
class DeviceFlags:
    """Where and how precisely the decoder runs, and the latents' seed (also ``inspect``'s)."""

    device: DeviceOption = RUN_DEFAULTS["device"]
    dtype: DtypeOption = RUN_DEFAULTS["dtype"]
    seed: SeedOption = RUN_DEFAULTS["seed"]


@dataclass(frozen=True)
class RunFlags(DeviceFlags):
    """Every setting of the batch loop but the scales (``EstimateOptions``' CLI fields)."""

    num_samples: NumSamplesOption = RUN_DEFAULTS["num_samples"]
    batch_size: BatchSizeOption = RUN_DEFAULTS["batch_size"]
    tangent_chunk: TangentChunkOption = RUN_DEFAULTS["tangent_chunk"]
    max_memory: MaxMemoryOption = RUN_DEFAULTS["max_memory"]
    skip_nonfinite: SkipNonfiniteOption = RUN_DEFAULTS["skip_nonfinite"]
    target_stderr: TargetStderrOption = RUN_DEFAULTS["target_stderr"]
    min_samples: MinSamplesOption = RUN_DEFAULTS["min_samples"]
    probe_samples: ProbeSamplesOption = RUN_DEFAULTS["probe_samples"]
    checkpoint: CheckpointOption = RUN_DEFAULTS["checkpoint"]
    checkpoint_every: CheckpointEveryOption = RUN_DEFAULTS["checkpoint_every"]
    per_sample: PerSampleOption = RUN_DEFAULTS["per_sample"]
    save_latents: SaveLatentsOption = RUN_DEFAULTS["save_latents"]


@dataclass(frozen=True)
class SamplesRunFlags(RunFlags):
    """``samples`` scans fewer latents by default: it looks for extremes, it does not estimate."""

    num_samples: NumSamplesOption = SAMPLES_DEFAULT_NUM_SAMPLES


def estimate_options(flags: RunFlags, scales: Sequence[float] | None) -> EstimateOptions:
    """The run's ``EstimateOptions`` (validated there): the flags, the command's scales (None:
    the default), and Ctrl-C/SIGTERM ending the run with a partial result."""
    from genentropy_cli.run.options import EstimateOptions

    fields = {item.name: getattr(flags, item.name) for item in dataclasses.fields(flags)}
    chosen = tuple(scales) if scales else RUN_DEFAULTS["scales"]
    return EstimateOptions(scales=chosen, handle_signals=True, **fields)


# ----------------------------------------------------------------- output options

JsonOption = Annotated[bool, _output("--json", help="Print one JSON document on stdout instead of a table.")]
OutputOption = Annotated[Optional[str], _output(
    "--output", "-o", help="Also write the JSON result to this file (atomically).")]
QuietOption = Annotated[bool, _output("--quiet", "-q", help="No progress bar or notes on stderr (warnings stay).")]
PlotOption = Annotated[Optional[str], _output(
    "--plot", help="Also draw the result to this image (e.g. result.png): sweep-scale entropy vs s, track entropy "
                   "vs step; needs matplotlib: pip install 'genentropy\\[plot]'.")]
DebugOption = Annotated[bool, _output(
    "--debug", is_eager=True, callback=set_debug, help="Show tracebacks for errors (also before the command).")]


@dataclass(frozen=True)
class OutputFlags:
    """Where the result goes (``output.Sink``)."""

    json_output: JsonOption = False
    output: OutputOption = None
    quiet: QuietOption = False
    debug: DebugOption = False
