"""The stacked-tangent Jacobian against the plain paths: autograd per sample, torch.func.

Every comparison is with an independent computation (``torch.autograd.functional.jacobian``
per sample, reverse mode), never with the stacked method's own output; TorchScript decoders
are called several times (docs/method.md: forward AD through TorchScript can break on the 2nd call).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from genentropy_cli import estimate_entropy
from genentropy_cli.core.decoder import prepare_decoder
from genentropy_cli.core.jacobian import batched_jacobian, flat_decoder, torchscript_safe
from genentropy_cli.core.latents import LatentStream, make_latent_spec
from genentropy_cli.core.logdet import Workspace, gram_matrices
from genentropy_cli.core.references import HalfSphereRadial
from genentropy_cli.core.stacked import UnsupportedOperation, stacked_jacobian
from genentropy_cli.core.terms import compute_sample_terms
from genentropy_cli.models.architectures import DCGANGenerator, InfoGANGenerator, MLPDecoder


class ManyOps(torch.nn.Module):
    """Layer and group norm, softmax, bilinear upsampling, a residual product, a 3-D matmul
    (batch folded into rows), leaky ReLU, powers, average pooling, padding with a value,
    in-place ops: the rules beyond the generators'."""

    def __init__(self, latent_dim: int = 5):
        super().__init__()
        self.fc = torch.nn.Linear(latent_dim, 64)
        self.ln = torch.nn.LayerNorm(64)
        self.gn = torch.nn.GroupNorm(2, 4)
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.mix = torch.nn.Linear(4, 4)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.ln(self.fc(z))).view(-1, 4, 4, 4)
        h = h + torch.tanh(self.conv(self.gn(h))) * h
        h = F.interpolate(h, scale_factor=2.0, mode="bilinear")
        seq = h.flatten(2).transpose(1, 2)  # (B, 64, 4)
        seq = torch.softmax(self.mix(seq), dim=-1) * seq
        out = F.leaky_relu(seq, 0.1).pow(2) / (1 + seq.abs())
        out = F.avg_pool1d(out.transpose(1, 2), 2).clone()
        out.mul_(2.0).add_(0.5)
        torch.relu_(out)
        return F.pad(out, (1, 1), value=0.5).flatten(1) - 0.25


def reference_jacobians(flat_fn, latents: torch.Tensor) -> torch.Tensor:
    """(d, B, D), one sample at a time: reverse-mode autograd for small outputs, else
    torch.func.jacfwd (the engine's plain path, without its batching)."""

    def one(v):
        return flat_fn(v[None])[0]

    if flat_fn(latents[:1]).shape[1] <= 256:
        rows = [torch.autograd.functional.jacobian(one, z, vectorize=True) for z in latents]
    else:
        rows = [torch.func.jacfwd(one)(z) for z in latents]
    return torch.stack(rows).permute(2, 0, 1)


def decoders():
    torch.manual_seed(0)
    dcgan = DCGANGenerator(latent_dim=6, ngf=2, nc=1)
    info = InfoGANGenerator(latent_dim=7, width=0.05)
    with torch.no_grad():  # running statistics that differ from the identity
        for module in list(dcgan.modules()) + list(info.modules()):
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 2.0)
    return {
        "mlp": (MLPDecoder(6, 20, hidden=(16,)), (6,)),
        "infogan": (info, (7,)),
        "dcgan": (dcgan, (6, 1, 1)),
        "half-sphere": (HalfSphereRadial(), (2,)),
        "many-ops": (ManyOps(), (5,)),
    }


@pytest.mark.parametrize("name", list(decoders()))
def test_stacked_jacobian_matches_autograd_for_modules_and_torchscript(name):
    module, shape = decoders()[name]
    module = module.double().eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    dim = make_latent_spec(shape).dim
    latents = LatentStream(make_latent_spec(shape), seed=3).range(0, 3)
    expected = reference_jacobians(flat_decoder(module, shape), latents)
    scripted = torch.jit.script(module)
    for decoder in (module, scripted):
        flat = flat_decoder(decoder, shape)
        for chunk in (None, 1, 3):  # several calls: TorchScript must stay exact after the first
            with torchscript_safe():
                columns, outputs = stacked_jacobian(flat, latents, chunk, with_outputs=True)
            assert columns.shape == (dim, 3, expected.shape[2])
            torch.testing.assert_close(columns, expected, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(outputs, flat(latents), rtol=1e-12, atol=1e-14)


def test_float32_stacked_jacobian_is_as_close_to_float64_as_torch_func():
    module, shape = decoders()["infogan"]
    module = module.eval()
    latents = LatentStream(make_latent_spec(shape), seed=1).range(0, 4)
    exact = reference_jacobians(flat_decoder(module.double(), shape), latents)
    flat32 = flat_decoder(module.float(), shape)
    ours = stacked_jacobian(flat32, latents.float(), 3).double()
    theirs = batched_jacobian(flat32, latents.float(), 3).double()
    scale = exact.abs().max()
    assert (ours - exact).abs().max() <= 2 * (theirs - exact).abs().max() + 1e-6 * scale


W = torch.linspace(-1, 1, 24, dtype=torch.float64).reshape(4, 6)
TRAIN_NORM = torch.nn.BatchNorm1d(6).double().train()
UNSUPPORTED = {
    "mean over the batch": lambda z: z @ W - (z @ W).mean(0),
    "train-mode batch norm": lambda z: TRAIN_NORM(z @ W),
    "a constant per row": lambda z: (z @ W) * torch.arange(z.shape[0], dtype=z.dtype)[:, None],
    "a per-row constant concatenated": lambda z: torch.cat([z @ W, torch.arange(z.shape[0], dtype=z.dtype)[:, None]], 1),
    "flip of the batch": lambda z: (z @ W).flip(0),
    "sort": lambda z: torch.sort(z @ W, dim=1).values,
    "comparison": lambda z: torch.where(z @ W > 0, z @ W, 0.1 * (z @ W)),
    "reduction over everything": lambda z: (z @ W) * (z @ W).sum(),
    "transpose of the batch": lambda z: ((z @ W).t() * 2).t(),
}


@pytest.mark.parametrize("name", list(UNSUPPORTED))
def test_ops_that_mix_rows_or_lack_a_rule_are_refused_not_miscomputed(name):
    latents = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(UnsupportedOperation):
        stacked_jacobian(UNSUPPORTED[name], latents, 2)


SHIFT = torch.linspace(-1, 1, 6, dtype=torch.float64)
WITH_CONSTANTS = {
    "constant_minus_x": lambda z: SHIFT - torch.sin(z @ W),
    "x_minus_constant": lambda z: torch.sin(z @ W) - SHIFT,
    "constant_minus_2.5x": lambda z: torch.sub(SHIFT, torch.sin(z @ W), alpha=2.5),
    "constant_plus_2.5x": lambda z: torch.add(SHIFT, torch.sin(z @ W), alpha=2.5),
    "x_over_constant": lambda z: torch.sin(z @ W) / (SHIFT + 3),
    "constant_times_x": lambda z: (SHIFT + 3) * torch.sin(z @ W),
}


@pytest.mark.parametrize("name", list(WITH_CONSTANTS))
def test_sums_and_products_with_constants_match_autograd(name):
    """The linear-combination and scaling rules: a constant shifts the primal rows only, and
    scales (with its sign) every row; the outputs are the decoder's."""
    function = WITH_CONSTANTS[name]
    latents = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    columns, outputs = stacked_jacobian(function, latents, 3, with_outputs=True)
    torch.testing.assert_close(columns, reference_jacobians(function, latents), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(outputs, function(latents), rtol=1e-14, atol=1e-14)


def test_in_place_product_of_a_tensor_with_itself():
    """h.mul_(h): the stacked rule reads both tangents before writing (torch.func gets this one wrong)."""
    latents = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def squared_in_place(z):
        h = torch.sin(z @ W)
        return h.mul_(h)

    expected = reference_jacobians(lambda z: torch.sin(z @ W) ** 2, latents)
    torch.testing.assert_close(stacked_jacobian(squared_in_place, latents, 3), expected, rtol=1e-12, atol=1e-14)


def test_engine_chooses_stacked_and_its_terms_equal_the_vmap_terms():
    module, shape = decoders()["dcgan"]
    spec = make_latent_spec(shape)
    prepared = prepare_decoder(module, spec, torch.device("cpu"), torch.float64)
    assert prepared.jacobian_method == "stacked" and prepared.method_note is None
    assert prepared.activation_bytes_per_row > 0
    latents = LatentStream(spec, seed=2).range(0, 9)
    stacked = compute_sample_terms(prepared, latents, [1e-1, 1e-4], 4)
    prepared.jacobian_method = "vmap"
    plain = compute_sample_terms(prepared, latents, [1e-1, 1e-4], 4)
    torch.testing.assert_close(stacked.half_log_det, plain.half_log_det, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(stacked.eigenvalues, plain.eigenvalues, rtol=1e-9, atol=1e-14)


class SwitchesToAComparison(torch.nn.Module):
    """tanh(W z), the same function throughout; from its 6th call on it takes a branch the
    stacked method has no rule for (a comparison), as a data-dependent branch might."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(W.T.clone())
        self.calls = 0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        h = z @ self.weight.T
        if self.calls > 5:
            h = torch.where(h > 100, h, h)  # an identity through a comparison
        return torch.tanh(h)


def test_a_branch_without_rules_mid_run_falls_back_to_torch_func_with_the_same_answer():
    kwargs = dict(scales=[1e-3], n_samples=120, batch_size=20, dtype="float64", seed=4)
    switching = estimate_entropy(SwitchesToAComparison(), 4, **kwargs)
    assert switching.diagnostics["jacobian_method"] == "vmap"
    assert "comparison" in switching.diagnostics["jacobian_method_note"] or "gt" in switching.diagnostics[
        "jacobian_method_note"]
    plain = SwitchesToAComparison()
    plain.calls = -10**9  # never switches: stacked throughout
    steady = estimate_entropy(plain, 4, **kwargs)
    assert steady.diagnostics["jacobian_method"] == "stacked"
    assert switching.estimates[0].entropy == pytest.approx(steady.estimates[0].entropy, rel=1e-11)


def test_a_decoder_the_stacked_method_cannot_run_uses_vmap_and_says_why():
    result = estimate_entropy(lambda z: torch.sort(z @ W, dim=1).values, 4, n_samples=20, dtype="float64",
                              device="cpu")  # W lives on the CPU
    assert result.diagnostics["jacobian_method"] == "vmap"
    assert "sort" in result.diagnostics["jacobian_method_note"]


def test_gram_matrices_in_slabs_equal_one_slab():
    columns = torch.randn(5, 7, 11, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    whole = gram_matrices(columns, slab_bytes=10**9)
    per_sample = columns.double().permute(1, 0, 2)
    torch.testing.assert_close(whole, per_sample @ per_sample.transpose(1, 2), rtol=1e-15, atol=1e-15)
    # bmm over 1 sample or 7 may take other kernels (summing in another order): float64 round-off
    # of an 11-term sum of O(1) products, ~1e-15, is all that may differ
    torch.testing.assert_close(gram_matrices(columns, slab_bytes=1), whole, rtol=1e-14, atol=1e-14)  # one at a time
    workspace = Workspace()
    for slab_bytes in (10**9, 1, 3 * 5 * 11 * 8):  # the buffer is reused, shrunk and regrown
        torch.testing.assert_close(gram_matrices(columns, slab_bytes, workspace), whole, rtol=1e-14, atol=1e-14)


def test_in_place_ops_are_recognised_on_a_torch_without_the_inplace_tag(monkeypatch):
    """torch 2.11 has no torch.Tag.inplace (it raised AttributeError on every pointwise op there):
    the aten name's trailing '_' then marks an in-place op, and the Jacobians stay exact."""
    real_tags = torch.Tag

    class TagsOfTorch211:
        def __getattr__(self, name):
            if name == "inplace":
                raise AttributeError(name)
            return getattr(real_tags, name)

    monkeypatch.setattr(torch, "Tag", TagsOfTorch211())
    latents = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def in_place(z):
        h = torch.sin(z @ W)
        return torch.relu_(h.mul_(h) - 0.1)

    expected = reference_jacobians(lambda z: torch.relu(torch.sin(z @ W) ** 2 - 0.1), latents)
    torch.testing.assert_close(stacked_jacobian(in_place, latents, 3), expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(stacked_jacobian(lambda z: torch.sigmoid(z @ W), latents, 4),
                               reference_jacobians(lambda z: torch.sigmoid(z @ W), latents), rtol=1e-12, atol=1e-14)


def test_cudnn_batch_norm_is_the_eval_mode_affine_map():
    """On CUDA eval-mode batch norm dispatches to aten.cudnn_batch_norm (4 outputs); its rule is the
    same per-channel affine map as native_batch_norm's (the H100 fell back to torch.func without it).
    The rule never calls the cuDNN kernel, so it is checked here on the CPU against F.batch_norm."""
    generator = torch.Generator().manual_seed(3)
    weight, bias, mean, var = (torch.rand(3, generator=generator, dtype=torch.float64) + 0.5 for _ in range(4))
    mix = torch.randn(4, 12, generator=generator, dtype=torch.float64)

    def with_cudnn(z):
        x = (z @ mix).reshape(-1, 3, 4)
        return torch.ops.aten.cudnn_batch_norm(x, weight, bias, mean, var, False, 0.1, 1e-5)[0].flatten(1)

    def with_native(z):
        x = (z @ mix).reshape(-1, 3, 4)
        return torch.nn.functional.batch_norm(x, mean, var, weight, bias, False, 0.1, 1e-5).flatten(1)

    latents = torch.randn(5, 4, dtype=torch.float64, generator=generator)
    torch.testing.assert_close(stacked_jacobian(with_cudnn, latents, 4), reference_jacobians(with_native, latents),
                               rtol=1e-12, atol=1e-14)


def test_elementwise_activations_without_the_pointwise_tag_still_go_stacked(monkeypatch):
    """torch 2.11 leaves leaky_relu (and other activations) without Tag.pointwise: those known to be
    elementwise get the pointwise rule by name, exact against autograd."""
    real_tags = torch.Tag

    class TagsWithoutPointwiseMarks:
        pointwise = object()  # in no op's tags: only the rules and the names remain

        def __getattr__(self, name):
            return getattr(real_tags, name)

    monkeypatch.setattr(torch, "Tag", TagsWithoutPointwiseMarks())
    latents = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    activations = (torch.nn.functional.leaky_relu, torch.nn.functional.gelu, torch.nn.functional.silu,
                   torch.nn.functional.elu, torch.nn.functional.softplus, torch.nn.functional.hardtanh)
    for activation in activations:
        torch.testing.assert_close(stacked_jacobian(lambda z: activation(z @ W), latents, 4),
                                   reference_jacobians(lambda z: activation(z @ W), latents), rtol=1e-12, atol=1e-14)
