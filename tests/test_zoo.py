"""Every real architecture of the zoo (benchmarks/zoo.py), in every form a user hands over
(nn.Module, torch.jit.script, torch.jit.trace, torch.export ``.pt2``, the files read back by the
project's own loader), runs on the stacked method, and its Jacobians are those of reverse mode.

The reference is independent of the engine: ``torch.autograd.functional.jacobian`` of the
original ``nn.Module``, one sample at a time, in float64; for zuko's flows also the flow's own
log|det| of its inverse (its closed form), against the engine's per-sample log-det term. A form
that cannot be made (``torch.jit.script`` of zuko's lazy transforms, of a parametrized module; a
trace that fixed the batch size) is skipped with its reason, only where ``UNAVAILABLE`` expects it.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from genentropy_cli.core.decoder import prepare_decoder
from genentropy_cli.core.latents import LatentStream
from genentropy_cli.core.terms import compute_sample_terms

ZOO_FILE = Path(__file__).resolve().parent.parent / "benchmarks" / "zoo.py"


def load_zoo():
    if "genentropy_zoo" not in sys.modules:
        spec = importlib.util.spec_from_file_location("genentropy_zoo", ZOO_FILE)
        module = importlib.util.module_from_spec(spec)
        sys.modules["genentropy_zoo"] = module
        spec.loader.exec_module(module)
    return sys.modules["genentropy_zoo"]


zoo = load_zoo()

UNAVAILABLE = {
    ("spectral-norm", "script"): "Comprehension ifs are not supported",  # torch's parametrizations
    ("stylegan-fused", "trace"): "batch size it was made with",  # groups=batch traced as a constant
    ("zuko-maf", "script"): "LazyTransform",
    ("zuko-nsf", "script"): "LazyTransform",
    ("zuko-realnvp", "script"): "LazyTransform",
}
"""(architecture, form) -> why torch cannot make that form (checked against the actual reason)."""

TOLERANCE = 1000 * torch.finfo(torch.float64).eps
"""Largest difference from the reference, relative to the largest entry: float64 round-off (the
engine's own stacked-versus-reference check uses the same bound)."""


REFERENCE_ROWS = 192
"""Output entries the reference computes on larger outputs (a fixed random subset: reverse mode
costs one backward pass per entry, and float64 transposed convolutions are slow on a CPU)."""


@functools.lru_cache(maxsize=None)
def reference(name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(latents (3, d), the output entries compared, Jacobian rows (d, 3, entries)): reverse mode,
    one sample at a time, on the original module (the same for every form)."""
    module, spec = zoo.build(name), zoo.make_latent_spec(zoo.ZOO[name].latent_shape)
    latents = LatentStream(spec, seed=3).range(0, 3)
    with torch.no_grad():
        size = module(latents[:1].reshape(1, *spec.shape)).numel()
    entries = torch.arange(size) if size <= REFERENCE_ROWS else torch.randperm(
        size, generator=torch.Generator().manual_seed(0))[:REFERENCE_ROWS].sort().values

    def one(flat):
        return module(flat.reshape(1, *spec.shape)).reshape(-1)[entries]

    rows = [torch.autograd.functional.jacobian(one, z, vectorize=True) for z in latents]
    return latents, entries, torch.stack(rows).permute(2, 0, 1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("zoo")


@pytest.mark.parametrize("form", zoo.FORMS)
@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_every_form_of_every_architecture_runs_stacked_with_exact_jacobians(name, form, folder):
    needs = zoo.ZOO[name].needs
    if needs is not None and importlib.util.find_spec(needs) is None:
        pytest.skip(f"{needs} is not installed (pip install {needs}; it is in the test extra)")
    try:
        module, decoder, spec = zoo.produce(name, form, folder)
    except zoo.FormUnavailable as error:
        assert (name, form) in UNAVAILABLE, f"{name} as {form}: form unavailable ({error})"
        assert UNAVAILABLE[(name, form)] in str(error)
        pytest.skip(f"form unavailable: {error}")
    prepared = prepare_decoder(decoder, spec, torch.device("cpu"), torch.float64)
    assert (prepared.jacobian_method, prepared.method_note) == ("stacked", None)
    latents, entries, expected = reference(name)
    columns, outputs = prepared.jacobian(latents)
    with torch.no_grad():
        torch.testing.assert_close(outputs, module(latents.reshape(3, *spec.shape)).reshape(3, -1),
                                   rtol=TOLERANCE, atol=TOLERANCE)
    scale = float(expected.abs().max())
    assert scale > 0
    assert float((columns[:, :, entries] - expected).abs().max()) <= TOLERANCE * scale
    if name.startswith("zuko-"):
        terms = compute_sample_terms(prepared, latents, [0.0])
        transform = module.flow().transform.inv
        with torch.no_grad():
            _, log_det = transform.call_and_ladj(latents)
        torch.testing.assert_close(terms.half_log_det[:, 0], log_det, rtol=1e-11, atol=1e-11)


def test_the_zoo_covers_what_the_issue_names():
    """Residual blocks with Upsample and PixelShuffle, self-attention, modulated convolution (fused
    and not), LayerNorm/GroupNorm, SiLU/GELU, spectral norm, flows with masks, indexing and splines."""
    text = ZOO_FILE.read_text()
    for needed in ("nn.Upsample", "nn.PixelShuffle", "torch.bmm", "torch.softmax", "groups=batch", "nn.LayerNorm",
                   "nn.GroupNorm", "nn.SiLU", "nn.GELU", "parametrizations.spectral_norm", "zuko.flows.NSF",
                   "torch.where", "self.permutation]"):
        assert needed in text, needed
    assert set(zoo.FORMS) == {"module", "script", "trace", "pt2"}
