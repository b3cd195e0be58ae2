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
from genentropy_cli.models.loading import save_torchscript


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
    "random values like the rows": lambda z: torch.rand_like(z @ W) + z @ W,
    "gather along the batch dimension": lambda z: torch.gather(z @ W, 0, torch.zeros(z.shape[0], 6, dtype=torch.long)),
    "index along the batch dimension": lambda z: (z @ W)[torch.arange(z.shape[0]).flip(0)],
    "index by indices computed from the latent": lambda z: (z @ W)[:, (z[:, 0] > 0).long()],
    "bin boundaries that differ per row": lambda z: torch.searchsorted(
        torch.arange(3 * z.shape[0], dtype=z.dtype).reshape(-1, 3), (z @ W)[:, :1]).to(z.dtype) * (z @ W),
    "a reshape that splits the rows": lambda z: (z @ W).reshape(2, -1).sum(0).reshape(z.shape[0], -1),
    "reduction over everything": lambda z: (z @ W) * (z @ W).sum(),
    "transpose of the batch": lambda z: ((z @ W).t() * 2).t(),
}


@pytest.mark.parametrize("name", list(UNSUPPORTED))
def test_ops_that_mix_rows_or_lack_a_rule_are_refused_not_miscomputed(name):
    latents = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(UnsupportedOperation):
        stacked_jacobian(UNSUPPORTED[name], latents, 2)


def piecewise_linear_spline(z: torch.Tensor) -> torch.Tensor:
    """A spline as flows write one: knots and values per sample (cumsum of softmax/softplus),
    the bin by a search, knots gathered by a stacked (k, k + 1) index (the batch dimension moved),
    unbound, interpolated; outside the knots, the input itself (a mask and where)."""
    h = z @ W
    knots = torch.nn.functional.pad(torch.cumsum(torch.softmax(h, -1), -1), (1, 0)) * 4 - 2  # (B, 7)
    values = torch.nn.functional.pad(torch.cumsum(torch.nn.functional.softplus(h), -1), (1, 0)) - 1
    x = torch.tanh(h[:, :3]) * 2.5  # (B, 3)
    k = torch.searchsorted(knots[:, None, :].expand(-1, 3, -1).contiguous(), x[..., None]).squeeze(-1) - 1
    inside = torch.logical_and(k >= 0, k < 6)
    k = k.clamp(0, 5)
    pair = torch.stack((k, k + 1))[..., None]  # (2, B, 3, 1)
    x0, x1 = knots[:, None, :].expand(2, -1, 3, -1).gather(-1, pair).squeeze(-1)
    y0, y1 = values[:, None, :].expand(2, -1, 3, -1).gather(-1, pair).squeeze(-1)
    spline = y0 + (y1 - y0) * inside * (x - x0) / (x1 - x0)
    return torch.where(inside, spline, x)


def coupling_with_index_put(z: torch.Tensor) -> torch.Tensor:
    """zuko's coupling merge: split by constant indices, new_empty, index_put_ of each half."""
    h = torch.sin(z @ W)
    first, second = torch.tensor([0, 2, 4]), torch.tensor([1, 3, 5])
    kept, moved = h[..., first], h[..., second]
    out = kept.new_empty(h.shape)
    out[..., first] = kept
    out[..., second] = moved * torch.exp(kept) + torch.ones_like(moved)
    out[:, 0] = 0.5  # constants written into stacked rows (fill_, index_put_, index_put_ accumulating)
    out[:, torch.tensor([2, 3])] = torch.tensor([0.25, -0.5], dtype=z.dtype)
    torch.ops.aten.index_put_(out, [None, torch.tensor([4, 5])], torch.tensor([1.0, 2.0], dtype=z.dtype), True)
    return out


def modulated_convolution(z: torch.Tensor) -> torch.Tensor:
    """StyleGAN2's fused form: per-sample weights, the batch folded into the channels, groups=batch."""
    style = (z @ W)[:, :2] + 1  # (B, 2 input channels)
    base = torch.linspace(-1, 1, 3 * 2 * 9, dtype=z.dtype).reshape(3, 2, 3, 3)
    x = torch.tanh(z @ W).reshape(-1, 2, 3, 1).expand(-1, 2, 3, 3)
    weight = base[None] * style[:, None, :, None, None]
    weight = weight * torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8)[:, :, None, None, None]
    out = F.conv2d(x.reshape(1, -1, 3, 3), weight.reshape(-1, 2, 3, 3), padding=1, groups=z.shape[0])
    return out.reshape(z.shape[0], -1)


SUPPORTED = {
    "where with a mask": lambda z: torch.where(z @ W > 0, z @ W, 0.1 * (z @ W)),
    "mask times a value": lambda z: (z @ W > 0) * torch.sin(z @ W) + (z @ W < 0).to(z.dtype),
    "a float turned into a gather index": lambda z: torch.gather(
        torch.cos(z @ W), 1, (torch.sigmoid(z @ W) * 5.999).long()),
    "spline": piecewise_linear_spline,
    "coupling with index_put": coupling_with_index_put,
    "constant permutation and index_select": lambda z: torch.index_select((z @ W)[:, [5, 0, 3, 1, 4, 2]] ** 2, 1,
                                                                         torch.tensor([1, 1, 0])),
    "fresh constants": lambda z: torch.full_like(z @ W, 3.0) * (z @ W) + torch.zeros_like(z).sum(1, keepdim=True)
    + (z @ W).new_ones((z.shape[0], 6)),
    "bmm of two stacked tensors": lambda z: torch.softmax(
        torch.bmm((z @ W)[:, :, None], torch.tanh(z @ W)[:, None, :]), -1).flatten(1),
    "modulated convolution": modulated_convolution,
    "prelu and cumsum": lambda z: torch.cumsum(F.prelu(z @ W, torch.tensor([0.2], dtype=z.dtype)), 1),
}


@pytest.mark.parametrize("name", list(SUPPORTED))
def test_masks_indices_splines_and_products_match_autograd(name):
    """The rules for comparisons, masks, bin searches, gathers with a moved batch dimension,
    index_put, fresh constants, bmm of two stacked operands, folded grouped convolution."""
    function = SUPPORTED[name]
    latents = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    expected = reference_jacobians(function, latents)
    for chunk in (1, 4):
        columns, outputs = stacked_jacobian(function, latents, chunk, with_outputs=True)
        torch.testing.assert_close(columns, expected, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(outputs, function(latents), rtol=1e-14, atol=1e-14)


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


def test_matrix_products_give_the_primal_rows_of_a_plain_forward_pass_bit_for_bit():
    """addmm (nn.Linear) and mm (a bias-free one) compute the primal rows apart from the tangent
    rows: a GEMM over all (k + 1) B rows rounds them otherwise than a forward pass of B rows."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LeakyReLU(0.2), torch.nn.Linear(8, 8, bias=False),
                              torch.nn.LeakyReLU(0.2), torch.nn.Linear(8, 5)).requires_grad_(False)
    latents = torch.randn(2, 8)
    _, outputs = stacked_jacobian(net, latents, with_outputs=True, max_columns=8)
    assert torch.equal(outputs, net(latents))


def test_engine_chooses_stacked_where_a_relu_input_is_zero_up_to_round_off_at_the_probe():
    """Leaky-ReLU inputs 0 up to round-off at the engine's probe latents (a few of the millions in
    NVlabs' StyleGAN2 at 256 px are): the stacked primal must be the plain forward pass's bit for
    bit, else round-off puts an input on the kink's other side, a one-sided derivative reverse
    mode does not take, and the probe check refuses exact rules."""
    torch.manual_seed(0)
    spec = make_latent_spec((8,))
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LeakyReLU(0.2), torch.nn.Linear(8, 16))
    probe = LatentStream(spec, seed=0).range(0, 2).float()  # the engine's probe (decoder._probe_latents)
    units, rows = torch.arange(8), torch.arange(8) % 2
    with torch.no_grad():
        net[0].bias.copy_(-F.linear(probe, net[0].weight)[rows, units])  # unit j at the kink for probe row j % 2
    prepared = prepare_decoder(net, spec, torch.device("cpu"), torch.float32)
    assert prepared.jacobian_method == "stacked", prepared.method_note


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


class SwitchesToARoll(torch.nn.Module):
    """tanh(W z), the same function throughout; from its 6th call on it takes a branch the
    stacked method has no rule for (a roll there and back), as a data-dependent branch might."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(W.T.clone())
        self.calls = 0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        h = z @ self.weight.T
        if self.calls > 5:
            h = torch.roll(torch.roll(h, 1, 1), -1, 1)  # an identity through an op without a rule
        return torch.tanh(h)


def test_a_branch_without_rules_mid_run_falls_back_to_torch_func_with_the_same_answer():
    kwargs = dict(scales=[1e-3], n_samples=120, batch_size=20, dtype="float64", seed=4)
    switching = estimate_entropy(SwitchesToARoll(), 4, **kwargs)
    assert switching.diagnostics["jacobian_method"] == "vmap"
    assert "roll" in switching.diagnostics["jacobian_method_note"]
    plain = SwitchesToARoll()
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


class SortsItsFeatures(torch.nn.Module):
    """A decoder with an op the stacked method has no rule for (sort)."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 8)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sort(self.linear(z), dim=1).values


def test_the_estimate_table_says_which_method_ran_and_why(run_cli, tmp_path):
    """Not only the JSON: the table under the estimate names the Jacobian method and, for a
    fallback, the reason in one line."""
    torch.manual_seed(0)
    cases = ((SortsItsFeatures(), "vmap (stacked method unavailable: no stacked-tangent rule for sort)"),
             (MLPDecoder(3, 8, hidden=(4,)), "stacked (one forward pass over stacked rows)"))
    for number, (module, expected) in enumerate(cases):
        path = save_torchscript(module, tmp_path / f"model{number}.pt", make_latent_spec(3))
        result = run_cli("estimate", path, "-n", "64", "--quiet", "--device", "cpu", "--dtype", "float64")
        assert result.exit_code == 0, result.stderr
        line = next(line for line in result.stdout.splitlines() if "Jacobian method" in line)
        assert expected in line
        document = run_cli("estimate", path, "-n", "64", "--quiet", "--device", "cpu", "--dtype", "float64",
                           "--json").json()
        assert document["diagnostics"]["jacobian_method"] == expected.split()[0]


def test_a_rule_that_crashes_makes_the_engine_fall_back_and_say_why(monkeypatch):
    """A rule that raises something other than UnsupportedOperation (a bug, an op called with
    arguments it did not expect) does not end the run: the probe falls back to torch.func."""
    from genentropy_cli.core import stacked_rules

    def broken(mode, func, args, kwargs):
        raise IndexError("tuple index out of range")

    monkeypatch.setitem(stacked_rules.RULES, torch.ops.aten.addmm, broken)
    prepared = prepare_decoder(MLPDecoder(4, 8, hidden=(6,)), make_latent_spec(4), torch.device("cpu"), torch.float64)
    assert prepared.jacobian_method == "vmap"
    assert prepared.method_note == "stacked method failed: tuple index out of range"


def test_the_probe_check_sees_the_primal_rows_of_a_plain_forward_pass_bit_for_bit():
    """With exact_primal (the engine's probe check) a convolution's bias and an eval-mode batch
    norm give the primal rows the decoder's own ops give, bit for bit; without it the bias is
    added apart, which may round otherwise (the Jacobian is the same either way)."""
    from genentropy_cli.core.stacked import stacked_jacobian_profiled

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Unflatten(1, (32, 8, 8)), torch.nn.Conv2d(32, 6, 3, padding=1),
                              torch.nn.BatchNorm2d(6), torch.nn.LeakyReLU(0.2), torch.nn.Conv2d(6, 3, 3),
                              torch.nn.Flatten()).eval().requires_grad_(False)  # 32 channels: the bias rounds apart
    net[2].running_mean.uniform_(-1, 1)
    net[2].running_var.uniform_(0.5, 2)
    latents = torch.randn(3, 32 * 8 * 8)
    exact, outputs, _ = stacked_jacobian_profiled(net, latents, max_columns=5, exact_primal=True)
    assert torch.equal(outputs, net(latents))
    plain, _, _ = stacked_jacobian_profiled(net, latents, max_columns=5)
    torch.testing.assert_close(exact, plain, rtol=1e-6, atol=1e-6)
    expected = torch.func.jacrev(lambda z: net(z.unsqueeze(0)).squeeze(0))
    reference = torch.stack([expected(z) for z in latents]).permute(2, 0, 1)[:5]
    torch.testing.assert_close(exact, reference, rtol=1e-5, atol=1e-5)
