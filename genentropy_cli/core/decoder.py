"""A decoder prepared for estimation (private copy, eval mode, no parameter gradients) and the
choice of Jacobian method: stacked where an independent AD reference agrees, else torch.func.
"""

from __future__ import annotations

import math
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from genentropy_cli.core.activations import activation_bytes_per_row
from genentropy_cli.core.jacobian import (
    DecoderFn,
    copy_with_fresh_torchscript,
    differentiable_attention,
    flat_decoder,
    fresh_torchscript_copy,
    is_torchscript,
    reverse_mode_columns,
    torchscript_parts,
    torchscript_safe,
)
from genentropy_cli.core.latents import LatentSpec, LatentStream
from genentropy_cli.core.logdet import Workspace
from genentropy_cli.core.methods import FALLBACK_ORDER, JACOBIAN_METHODS
from genentropy_cli.core.rowcheck import check_rows_independent
from genentropy_cli.core.stacked import UnsupportedOperation, stacked_jacobian_profiled
from genentropy_cli.defaults import STACKED_PROBE_COLUMNS
from genentropy_cli.errors import InputError, first_line

__all__ = [
    "JACOBIAN_METHODS",
    "PreparedDecoder",
    "fallback_method",
    "jacobians_agree",
    "prepare_decoder",
    "private_copy",
    "runs_in",
    "stacked_tolerance",
]


@dataclass
class PreparedDecoder:
    """A decoder ready for estimation: a private copy in eval mode, gradients off, on
    ``device`` in ``dtype``; TorchScript reloaded fresh and run without the optimising
    executor so forward-mode AD stays exact on every call."""

    function: DecoderFn
    latent: LatentSpec
    device: torch.device
    dtype: torch.dtype
    output_dim: int
    output_shape: tuple[int, ...]
    torchscript: bool
    jacobian_method: str = "vmap"
    fallback_method: str | None = None
    """The torch.func method (vmap or replicated) that works; used where stacked meets an op it
    lacks. Found on first need (``fallback_method``) when the stacked method is chosen."""
    activation_bytes_per_row: int | None = None
    """Largest bytes one op of the decoder holds per row (inputs plus output), measured on the probe."""
    method_note: str | None = None
    """Why the stacked method is not used, when it is not."""
    workspace: Workspace = field(default_factory=Workspace, repr=False)
    """The float64 buffer the Gram step reuses from batch to batch."""

    def context(self, method: str | None = None):
        """TorchScript without its optimising executor; for torch.func's methods (``method``, else
        the chosen one) attention by its math backend (``differentiable_attention``)."""
        stack = ExitStack()
        if self.torchscript:
            stack.enter_context(torchscript_safe())
        if (method or self.jacobian_method) != "stacked":
            stack.enter_context(differentiable_attention())
        return stack

    def flat(self) -> DecoderFn:
        return flat_decoder(self.function, self.latent.shape)

    def decode(self, flat_latents: torch.Tensor) -> torch.Tensor:
        """Decoder outputs for flat float64 latents (B, d), as (B, *output_shape)."""
        with torch.no_grad(), self.context():
            batch = flat_latents.shape[0]
            inputs = flat_latents.to(device=self.device, dtype=self.dtype).reshape(batch, *self.latent.shape)
            return self.function(inputs)

    def jacobian(self, flat_latents: torch.Tensor, tangent_chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Jacobian columns (d, B, D) and outputs (B, D) at flat float64 latents (B, d), by
        ``jacobian_method``; where the stacked method meets an op it has no rule for (a branch
        of the decoder the probe did not reach), by ``fallback_method`` from then on."""
        inputs = flat_latents.to(device=self.device, dtype=self.dtype)
        with self.context():
            try:
                return JACOBIAN_METHODS[self.jacobian_method](self.flat(), inputs, tangent_chunk, with_outputs=True)
            except UnsupportedOperation as error:
                self.jacobian_method = fallback_method(self)
                self.method_note = f"stacked method left mid-run: {error}"
        with self.context():
            return JACOBIAN_METHODS[self.jacobian_method](self.flat(), inputs, tangent_chunk, with_outputs=True)


def private_copy(decoder: Any, device: torch.device, dtype: torch.dtype) -> tuple[Any, bool]:
    """The decoder the estimate runs, and whether TorchScript is in it: a copy of a module (its
    TorchScript parts reloaded fresh) in eval mode without parameter gradients, on ``device`` in
    ``dtype``; a plain callable as it is."""
    torchscript = is_torchscript(decoder)
    if torchscript:
        module = fresh_torchscript_copy(decoder)
    elif isinstance(decoder, torch.nn.Module):
        torchscript = bool(torchscript_parts(decoder))  # e.g. an output transform around TorchScript
        module = copy_with_fresh_torchscript(decoder)
    elif callable(decoder):
        module = decoder
    else:
        raise InputError(f"the decoder must be a torch.nn.Module or a callable, got {type(decoder).__name__}")
    if isinstance(module, torch.nn.Module):
        _refuse_meta_tensors(module)
        module = module.eval()
        for parameter in module.parameters():
            parameter.requires_grad_(False)
        module = module.to(device=device, dtype=dtype)
    return module, torchscript



TORCHSCRIPT_PREAMBLE = "The following operation failed in the TorchScript interpreter"


def _reason(error: Exception) -> str:
    """The line of a decoder's error that says what failed (TorchScript's is its last line)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if lines and lines[0].startswith(TORCHSCRIPT_PREAMBLE):
        return lines[-1]
    return first_line(error)


def _refuse_meta_tensors(module: torch.nn.Module) -> None:
    """A parameter or buffer on the meta device has a shape and no values (a model built under
    ``torch.device("meta")`` whose weights were never loaded): nothing can be computed from it."""
    for kind, tensors in (("parameter", module.named_parameters()), ("buffer", module.named_buffers())):
        for name, tensor in tensors:
            if tensor.is_meta:
                raise InputError(f"the decoder's {kind} {name} is on the meta device (a shape without values): load "
                                 "its weights first (load_state_dict(..., assign=True), or to_empty() then load)")


CLASS_COUNT_ATTRIBUTES = ("num_classes", "n_classes", "num_labels", "n_labels", "num_class", "n_class")
"""Attributes a conditional module commonly keeps its class count in (the hint for --num-classes)."""


def _class_count_hint(decoder: Any) -> str:
    """``K`` where the decoder (or a module inside it) records its number of classes, else ``K``."""
    modules = decoder.modules() if isinstance(decoder, torch.nn.Module) else [decoder]
    for module in modules:
        for name in CLASS_COUNT_ATTRIBUTES:
            value = getattr(module, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return str(value)
    return "K"


NO_LABEL_ERRORS: tuple[tuple[str, ...], ...] = (
    ("positional argument", "were given"),  # Python: forward(z) called with (z, y)
    ("unexpected keyword argument",),
    ("expected at most", "but received"),  # TorchScript
    ("Keyword argument", "unknown"),
)
"""What a decoder's error says when it was given a label it has no parameter for."""


def _label_failure(decoder: Any, latent: LatentSpec, device: torch.device, dtype: torch.dtype,
                   error: Exception) -> InputError | None:
    """Why a decoder bound to a class fails, where the label is to blame: the other label format
    runs (labels in the wrong format), or another class runs (this class is the problem)."""
    from dataclasses import replace

    from genentropy_cli.core.labels import LABEL_FORMATS, ClassBoundDecoder

    if not isinstance(decoder, ClassBoundDecoder):
        return None
    spec, label = decoder.spec, decoder.label
    reason = _reason(error)
    text = str(error)
    if any(all(part in text for part in parts) for parts in NO_LABEL_ERRORS):
        return InputError(f"the decoder takes no class label ({reason}): it is unconditional; leave out "
                          "--num-classes and the other label options (or the label entry of its spec)")
    for other in LABEL_FORMATS:
        if other != spec.format and runs_in(ClassBoundDecoder(decoder.decoder, replace(spec, format=other), label),
                                             latent, device, dtype):
            return InputError(f"the decoder fails with {spec.format} labels ({reason}) but runs with {other} labels: "
                              f"pass --label-format {other}")
    others = [candidate for candidate in (0, spec.num_classes - 1, label - 1, label + 1)
              if candidate != label and 0 <= candidate < spec.num_classes]
    for candidate in dict.fromkeys(others):
        if runs_in(ClassBoundDecoder(decoder.decoder, spec, candidate), latent, device, dtype):
            return InputError(f"the decoder fails for class {label} ({reason}) but runs for class {candidate}: check "
                              f"--num-classes ({spec.num_classes} given), or leave class {label} out with --classes")
    return None


def runs_in(decoder: Any, latent: LatentSpec, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a copy of the decoder in ``dtype`` runs on two zero latents (one forward pass; the
    copy is freed on return)."""
    try:
        module, torchscript = private_copy(decoder, device, dtype)
        with torch.no_grad(), (torchscript_safe() if torchscript else nullcontext()):
            module(torch.zeros(2, *latent.shape, dtype=dtype, device=device))
    except Exception:
        return False
    return True


def _probe_failure(decoder: Any, latent: LatentSpec, device: torch.device, dtype: torch.dtype,
                   error: Exception) -> InputError:
    """Why the decoder failed on two latents: its label (the other format, or another class, runs:
    ``_label_failure``), its dtype (a copy in another dtype runs), else the latent it is given
    (with a hint for a class label it was not given, and its class count where it records one)."""
    shape = "x".join(str(size) for size in latent.shape)
    name = str(dtype).removeprefix("torch.")
    blamed = _label_failure(decoder, latent, device, dtype, error)
    if blamed is not None:
        return blamed
    for other in (torch.float32, torch.float64):
        if other != dtype and runs_in(decoder, latent, device, other):
            other_name = str(other).removeprefix("torch.")
            return InputError(f"the decoder fails in {name} ({_reason(error)}) but runs in {other_name}: "
                              f"pass --dtype {other_name}")
    if "missing" in str(error) and "argument" in str(error):  # forward(z, y) called with z alone
        return InputError(f"the decoder takes more inputs than the latent ({_reason(error)}): if it takes a class "
                          f"label, give --num-classes {_class_count_hint(decoder)} (and --label-arg NAME for a "
                          "keyword); else wrap it so that it takes the latent alone")
    return InputError(
        f"latent size {shape} does not fit the decoder ({_reason(error)}); "
        "set --latent-dim or --latent-shape to what the decoder takes"
    )


def prepare_decoder(
    decoder: Any,
    latent: LatentSpec,
    device: torch.device,
    dtype: torch.dtype,
    *,
    copy: bool = True,
) -> PreparedDecoder:
    """Copy, configure and probe ``decoder`` on two latents; bad fits, and decoders that are
    random or mix the rows of a batch (``rowcheck``), are InputErrors. With ``copy=False`` the
    decoder is already ``private_copy``'s result (several class-bound views of one copy share its
    weights) and is only configured in place."""
    if copy:
        module, torchscript = private_copy(decoder, device, dtype)
    else:
        module = decoder
        torchscript = is_torchscript(decoder) or (
            isinstance(decoder, torch.nn.Module) and bool(torchscript_parts(decoder)))
    probe = torch.zeros(2, *latent.shape, dtype=dtype, device=device)
    try:
        with torch.no_grad(), (torchscript_safe() if torchscript else nullcontext()):
            output = module(probe)
    except InputError:
        raise
    except Exception as error:  # the decoder's own message says what it expected
        raise _probe_failure(decoder, latent, device, dtype, error) from None
    if not isinstance(output, torch.Tensor):
        raise InputError(
            f"the decoder returned a {type(output).__name__}, not a tensor; "
            "pick one output with --output-select KEY|INDEX, or wrap it so that it returns one tensor"
        )
    if output.dim() == 0 or output.shape[0] != 2:
        raise InputError(
            f"the decoder's output shape {tuple(output.shape)} has no batch dimension matching its input; "
            "it must map a batch of latents (B, ...) to a batch of outputs (B, ...)"
        )
    if not output.is_floating_point():
        raise InputError(f"the decoder returned a {output.dtype} tensor; it must return floating-point outputs")
    output_shape = tuple(output.shape[1:])
    output_dim = math.prod(output_shape)
    if output_dim < latent.dim:
        raise InputError(
            f"the decoder's output dimension D = {output_dim} is smaller than the latent dimension d = {latent.dim}; "
            "the estimator needs D >= d (check the latent size)"
        )
    prepared = PreparedDecoder(module, latent, device, dtype, output_dim, output_shape, torchscript)
    with prepared.context():
        check_rows_independent(module, _probe_latents(prepared).reshape(2, *latent.shape), stacked_tolerance(dtype))
    prepared.jacobian_method = _choose_jacobian_method(prepared)
    return prepared


def stacked_tolerance(dtype: torch.dtype) -> float:
    """How far (relative to the largest entry) stacked and torch.func Jacobians may differ on
    the probe: round-off of the dtype, far below any missing or wrong derivative rule."""
    return min(0.1, max(1e-10, 1000 * torch.finfo(dtype).eps))


def jacobians_agree(candidate: torch.Tensor, reference: torch.Tensor, tolerance: float) -> bool:
    finite = torch.isfinite(reference)
    if not torch.equal(finite, torch.isfinite(candidate)):
        return False
    if not bool(finite.any()):
        return True
    scale = float(reference[finite].abs().max())
    return float((candidate[finite] - reference[finite]).abs().max()) <= tolerance * max(scale, 1e-300)


def _probe_latents(prepared: PreparedDecoder) -> torch.Tensor:
    return LatentStream(prepared.latent, seed=0).range(0, 2).to(device=prepared.device, dtype=prepared.dtype)


def _torch_func_method(prepared: PreparedDecoder, columns: int) -> tuple[str, torch.Tensor]:
    """The first torch.func method of ``FALLBACK_ORDER`` that runs through the decoder (vmap over
    tangents, else the replicated batch) and its first ``columns`` Jacobian columns on the probe
    latents."""
    probe, flat = _probe_latents(prepared), prepared.flat()
    failure: Exception | None = None
    with prepared.context(method="vmap"):
        for method in FALLBACK_ORDER:
            try:
                return method, JACOBIAN_METHODS[method](flat, probe, tangent_chunk=columns, max_columns=columns)
            except Exception as error:
                failure = error
    raise InputError(
        f"forward-mode AD fails through this decoder ({first_line(failure)}); "
        "it must be differentiable with torch.func.jvp"
    ) from None


def fallback_method(prepared: PreparedDecoder) -> str:
    """The torch.func method to use where the stacked method meets an op it has no rule for,
    found on first need (``_torch_func_method``)."""
    if prepared.fallback_method is None:
        prepared.fallback_method, _ = _torch_func_method(prepared, 1)
    return prepared.fallback_method


def _choose_jacobian_method(prepared: PreparedDecoder) -> str:
    """The stacked method where its result matches an independent AD reference on probe
    latents, else the torch.func method (compared and probed on the first
    ``STACKED_PROBE_COLUMNS`` columns: the full Jacobian costs d directions).

    The reference is reverse mode (``reverse_mode_columns``), or torch.func's forward mode
    where the decoder lacks double backward. Also records the decoder's activation bytes per
    row for batch planning."""
    columns = min(prepared.latent.dim, STACKED_PROBE_COLUMNS)
    probe, flat = _probe_latents(prepared), prepared.flat()
    tolerance = stacked_tolerance(prepared.dtype)
    with prepared.context(method="stacked"):
        try:
            stacked, _, row_bytes = stacked_jacobian_profiled(flat, probe, columns, max_columns=columns,
                                                              exact_primal=True)
        except UnsupportedOperation as error:
            stacked, prepared.method_note = None, f"stacked method unavailable: {error}"
        except Exception as error:  # e.g. a decoder that refuses (k + 1) B rows: torch.func still may run
            stacked, prepared.method_note = None, f"stacked method failed: {first_line(error)}"
        if stacked is not None:
            try:
                reference = reverse_mode_columns(flat, probe, columns)
            except Exception:  # no double backward through some op: compare with torch.func
                reference = None
            if reference is not None and jacobians_agree(stacked, reference, tolerance):
                prepared.activation_bytes_per_row = row_bytes
                return "stacked"
    method, reference = _torch_func_method(prepared, columns)
    prepared.fallback_method = method
    if stacked is not None:
        if jacobians_agree(stacked, reference, tolerance):
            prepared.activation_bytes_per_row = row_bytes
            return "stacked"
        prepared.method_note = "the stacked Jacobian differed from torch.func's on the probe latents"
    with prepared.context():
        prepared.activation_bytes_per_row = activation_bytes_per_row(flat, probe)
    return method
