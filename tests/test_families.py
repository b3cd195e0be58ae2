"""The generators users hold, loaded from the files their own code writes, called as that code
calls them (issue 22): StyleGAN2-ADA / StyleGAN3 snapshots (plain pickles of a dict, G_ema, z_dim
and c_dim, noise_mode), BigGAN folders (G(z, class_onehot, truncation)) and diffusers VAEs
(vae.decode(z).sample). Each run's per-sample terms equal a reference computed with reverse-mode
autograd on the original module called the same way (float32 module, float64 log-det)."""

from __future__ import annotations

import math
import pickle
import sys

import numpy as np
import pytest
import torch
from family_support import (
    FAMILY_CODE,
    read_biggan,
    read_snapshot_generator,
    reference_terms,
    write_biggan_folder,
    write_stylegan_snapshot,
    write_vae_folder,
)

from genentropy_cli.core.decoder import prepare_decoder
from genentropy_cli.core.labels import bind_class
from genentropy_cli.core.latents import LatentStream
from genentropy_cli.models.resolve import ModelOptions, resolve_model
from genentropy_cli.run.compute import compute_sample_terms

SCALE = 1e-3
RELATIVE = 1e-4
NUM_LATENTS = 4


def pipeline_terms(options: ModelOptions, label: int | None = None) -> tuple[torch.Tensor, torch.Tensor, object]:
    """The latents and h_i genentropy computes for the model the options name (float32 decoder)."""
    resolved = resolve_model(options)
    decoder = resolved.decoder if label is None else bind_class(resolved.decoder, resolved.label, label)
    prepared = prepare_decoder(decoder, resolved.latent, torch.device("cpu"), torch.float32)
    latents = LatentStream(resolved.latent, seed=0).range(0, NUM_LATENTS)
    terms = compute_sample_terms(prepared, latents, [SCALE]).entropy_terms[:, 0]
    return latents, terms, (resolved, prepared)


def assert_terms_match(ours: torch.Tensor, reference: torch.Tensor) -> None:
    assert torch.isfinite(reference).all()
    assert torch.allclose(ours, reference, rtol=RELATIVE, atol=RELATIVE * float(reference.abs().max())), (ours, reference)


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    return (images + 1) / 2  # the [-1, 1] -> [0, 1] output range every family's convention records


@pytest.mark.parametrize("c_dim", [0, 3])
def test_stylegan_snapshot_terms_match_reverse_mode_on_the_original_call(tmp_path, c_dim):
    snapshot = write_stylegan_snapshot(tmp_path / "network-snapshot-000000.pkl", c_dim=c_dim)
    options = ModelOptions(snapshot, trust_pickle=True, code_path=(FAMILY_CODE,))
    latents, ours, (resolved, prepared) = pipeline_terms(options, label=None if c_dim == 0 else 2)
    assert resolved.loaded.selection == {"key": "G_ema"} and resolved.loaded.convention == "stylegan"
    assert resolved.latent.shape == (6,) and resolved.call.describe()["kwargs"]["noise_mode"] == "const"
    assert (resolved.label is None) == (c_dim == 0)
    generator = read_snapshot_generator(snapshot)
    label = None if c_dim == 0 else torch.eye(c_dim)[[2]]
    reference = reference_terms(lambda z: to_unit_range(generator(z, label, noise_mode="const")), latents, SCALE)
    assert_terms_match(ours, reference)


def test_stylegan_truncation_and_method_flags_reach_the_call(tmp_path):
    snapshot = write_stylegan_snapshot(tmp_path / "snap.pkl")
    options = ModelOptions(snapshot, trust_pickle=True, code_path=(FAMILY_CODE,),
                           call_kwargs=("truncation_psi=0.7", "noise_mode=none"))
    latents, ours, (resolved, _) = pipeline_terms(options)
    assert resolved.call_origin["kwargs"] == {"noise_mode": "flag", "c": resolved.call_origin["kwargs"]["c"],
                                              "truncation_psi": "flag"}
    generator = read_snapshot_generator(snapshot)
    with torch.no_grad():
        generator.mapping.w_avg.normal_()  # a non-zero average makes truncation visible
    # the estimate's own copy was loaded before: reload with the same w_avg to compare
    pickle.dump({"G_ema": generator}, open(tmp_path / "again.pkl", "wb"))
    options.path = tmp_path / "again.pkl"
    latents, ours, _ = pipeline_terms(options)
    reference = reference_terms(
        lambda z: to_unit_range(generator(z, None, truncation_psi=0.7, noise_mode="none")), latents, SCALE)
    assert_terms_match(ours, reference)
    untruncated = reference_terms(lambda z: to_unit_range(generator(z, None, noise_mode="none")), latents, SCALE)
    assert not torch.allclose(untruncated, reference, rtol=1e-3)  # the keyword changes the numbers


def test_biggan_folder_terms_match_reverse_mode_on_the_original_call(tmp_path):
    pytest.importorskip("pytorch_pretrained_biggan")
    folder = write_biggan_folder(tmp_path / "biggan")
    latents, ours, (resolved, prepared) = pipeline_terms(ModelOptions(folder), label=3)
    assert resolved.format == "biggan" and resolved.label.num_classes == 5 and resolved.latent.shape == (8,)
    assert prepared.jacobian_method == "stacked"
    model = read_biggan(folder)
    onehot = torch.eye(5)[[3]]
    reference = reference_terms(lambda z: to_unit_range(model(z, onehot, 1.0)), latents, SCALE)
    assert_terms_match(ours, reference)


@pytest.mark.parametrize("attention", [False, True])
def test_diffusers_vae_terms_match_reverse_mode_on_decode(tmp_path, attention):
    pytest.importorskip("diffusers")
    folder = write_vae_folder(tmp_path / "vae", attention=attention)
    latents, ours, (resolved, prepared) = pipeline_terms(ModelOptions(folder))
    assert resolved.format == "diffusers" and resolved.latent.shape == (2, 8, 8)
    assert resolved.call.method == "decode" and resolved.transform.select == "sample"
    import diffusers

    vae = diffusers.AutoencoderKL.from_pretrained(str(folder)).eval()
    reference = reference_terms(lambda z: to_unit_range(vae.decode(z.reshape(1, 2, 8, 8)).sample), latents, SCALE)
    assert_terms_match(ours, reference)


def test_stylegan_snapshot_runs_from_the_command_line(run_cli, tmp_path):
    snapshot = write_stylegan_snapshot(tmp_path / "network-snapshot-000000.pkl", c_dim=0)
    rows = tmp_path / "rows.npy"
    result = run_cli("estimate", snapshot, "--trust-pickle", "--code-path", FAMILY_CODE, "-n", "4", "--scale",
                     str(SCALE), "--per-sample", rows, "--save-latents", "--json")
    assert result.exit_code == 0, result.stderr
    document = result.json()
    model = document["model"]
    assert model["convention"] == "stylegan" and model["selected"] == {"key": "G_ema"}
    assert model["call"]["kwargs"] == {"noise_mode": "const", "c": None}
    assert document["diagnostics"]["always_collapsed"]["radial"] is True  # StyleGAN's normalised z
    table = np.load(rows)
    generator = read_snapshot_generator(snapshot)
    latents = torch.from_numpy(np.ascontiguousarray(table["latent"]))
    reference = reference_terms(lambda z: to_unit_range(generator(z, None, noise_mode="const")), latents, SCALE)
    assert_terms_match(torch.from_numpy(table["h"][:, 0].astype(np.float64)), reference)


def test_convert_records_the_call_and_inspect_shows_it(run_cli, tmp_path):
    pytest.importorskip("diffusers")
    folder = write_vae_folder(tmp_path / "vae", attention=False)
    shown = run_cli("inspect", folder, "--json")
    assert shown.exit_code == 0, shown.stderr
    call = shown.json()["model"]["call"]
    assert call["method"] == "decode" and "diffusers" in call["source"]["method"]
    table = run_cli("inspect", folder)
    assert "decode(z)" in table.stdout


def test_a_decoder_that_always_collapses_a_direction_is_told_apart(tmp_path):
    from genentropy_cli.core.invariance import radial_collapse

    stylegan = read_snapshot_generator(write_stylegan_snapshot(tmp_path / "s.pkl"))
    latents = torch.randn(4, 6)
    assert radial_collapse(lambda z: stylegan(z, None, noise_mode="const"), latents)["radial"] is True
    linear = torch.nn.Linear(6, 20)
    assert radial_collapse(linear, latents)["radial"] is False
    cubes = radial_collapse(lambda z: torch.cat([z, z**3], dim=1), latents)  # nothing collapsed: |J z| ~ |J v|
    assert cubes["radial"] is False and cubes["ratio"] > 0.1


# ----------------------------------------------------------------- refusals name the fix


def test_refusals_on_these_files_name_the_fix(run_cli, tmp_path, monkeypatch):
    snapshot = write_stylegan_snapshot(tmp_path / "network-snapshot-000000.pkl")
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry != str(FAMILY_CODE)])
    monkeypatch.delitem(sys.modules, "tinystylegan", raising=False)  # importable only through --code-path
    cases = [
        (("estimate", snapshot), "--trust-pickle"),
        (("estimate", snapshot, "--trust-pickle"), "--code-path"),
        (("estimate", snapshot, "--trust-pickle", "--code-path", FAMILY_CODE, "--call-kwarg", "noise_mode=random"),
         "noise_mode=const"),
        (("estimate", snapshot, "--trust-pickle", "--code-path", FAMILY_CODE, "--method", "decode"), "--method"),
        (("estimate", snapshot, "--trust-pickle", "--code-path", FAMILY_CODE, "--call-kwarg", "truncation_psi"),
         "KEY=VALUE"),
        (("estimate", snapshot, "--trust-pickle", "--code-path", FAMILY_CODE, "--select", "D"), "--latent-dim"),
    ]
    for arguments, fix in cases:
        result = run_cli(*arguments, "-n", "4")
        assert result.exit_code == 2, (arguments, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()  # notes of what was chosen may come first, then one error
        assert fix in lines[-1] and "Traceback" not in result.stderr, (arguments, result.stderr)
        assert [line.startswith("error:") for line in lines].count(True) == 1 and lines[-1].startswith("error:")


def test_a_stylegan_snapshot_without_its_repository_names_it(run_cli, tmp_path, monkeypatch):
    code = tmp_path / "repo" / "torch_utils"
    code.mkdir(parents=True)
    (code / "__init__.py").write_text("")
    (code / "persistence.py").write_text("def _reconstruct_persistent_obj(meta):\n    return meta\n")
    monkeypatch.syspath_prepend(str(tmp_path / "repo"))
    import torch_utils.persistence as persistence

    class Persistent:
        def __reduce__(self):
            return persistence._reconstruct_persistent_obj, ({"type": "class"},)

    snapshot = tmp_path / "network-snapshot-000100.pkl"
    snapshot.write_bytes(pickle.dumps({"G_ema": Persistent()}))
    for name in ("torch_utils", "torch_utils.persistence"):
        sys.modules.pop(name, None)
    monkeypatch.syspath_prepend(str(tmp_path))  # not the repository
    sys.path.remove(str(tmp_path / "repo"))
    untrusted = run_cli("estimate", snapshot)
    assert untrusted.exit_code == 2 and "StyleGAN snapshot" in untrusted.stderr and "--trust-pickle" in untrusted.stderr
    trusted = run_cli("estimate", snapshot, "--trust-pickle")
    assert trusted.exit_code == 2 and "torch_utils" in trusted.stderr and "--code-path" in trusted.stderr


def test_folder_refusals_name_the_fix(run_cli, tmp_path):
    pytest.importorskip("diffusers")
    folder = write_vae_folder(tmp_path / "vae", attention=False)
    (folder / "diffusion_pytorch_model.safetensors").rename(folder / "weights.bak")
    missing = run_cli("estimate", folder, "-n", "4")
    assert missing.exit_code == 2 and "safe_serialization=True" in missing.stderr
    pipeline = tmp_path / "pipeline"
    pipeline.mkdir()
    (pipeline / "model_index.json").write_text("{}")
    refused = run_cli("estimate", pipeline, "-n", "4")
    assert refused.exit_code == 2 and "vae" in refused.stderr
    other = tmp_path / "empty"
    other.mkdir()
    unknown = run_cli("estimate", other, "-n", "4")
    assert unknown.exit_code == 2 and "config.json" in unknown.stderr


def test_chi_entropy_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    from genentropy_cli.core.invariance import chi_entropy

    for dimension in (1, 2, 3, 6, 32, 200):
        assert chi_entropy(dimension) == pytest.approx(float(stats.chi(float(dimension)).entropy()), rel=1e-12)


def test_a_scale_invariant_decoder_gives_the_surface_entropy_after_the_documented_correction():
    """g(z) = z / |z| maps N(0, I_3) uniformly onto the unit sphere, whose entropy is log(4 pi):
    H_s - log s - H(chi_3) must give it (docs/method.md), and the run must say it collapses |z|."""
    from genentropy_cli import estimate_entropy
    from genentropy_cli.core.invariance import chi_entropy

    scale = 1e-5
    result = estimate_entropy(lambda z: z / z.norm(dim=1, keepdim=True), 3, [scale], 4000, dtype="float64")
    estimate = result.estimates[0]
    surface = estimate.entropy - math.log(scale) - chi_entropy(3)
    assert abs(surface - math.log(4 * math.pi)) < 4 * estimate.stderr + 1e-6
    assert result.diagnostics["always_collapsed"]["radial"] is True


def test_a_pipelines_vae_loads_from_the_hub_cache(run_cli, tmp_path, monkeypatch):
    pytest.importorskip("diffusers")
    pytest.importorskip("huggingface_hub")
    from tests.test_hub import hub_cache

    folder = write_vae_folder(tmp_path / "vae", attention=False)
    index = tmp_path / "model_index.json"
    index.write_text('{"_class_name": "StableDiffusionPipeline"}')
    files = {f"vae/{path.name}": path for path in folder.iterdir()} | {"model_index.json": index}
    hub_cache(tmp_path / "cache", "someone/pipeline", files)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    shown = run_cli("inspect", "hf://someone/pipeline/vae", "--json")
    assert shown.exit_code == 0, shown.stderr
    model = shown.json()["model"]
    assert model["format"] == "diffusers" and model["latent_shape"] == [2, 8, 8] and model["call"]["method"] == "decode"
    local = run_cli("inspect", folder, "--json").json()
    assert shown.json()["jacobian_probe"]["largest_singular_value"] == pytest.approx(
        local["jacobian_probe"]["largest_singular_value"], rel=1e-6)


def test_convert_writes_the_call_and_the_converted_file_gives_the_same_terms(run_cli, tmp_path):
    snapshot = write_stylegan_snapshot(tmp_path / "network-snapshot-000000.pkl", c_dim=0)
    target = tmp_path / "G_ema.safetensors"
    converted = run_cli("convert", snapshot, target, "--trust-pickle", "--code-path", FAMILY_CODE,
                        "--call-kwarg", "truncation_psi=0.5", "--json")
    assert converted.exit_code == 0, converted.stderr
    spec = converted.json()["spec"]
    assert spec["import"] == "tinystylegan:TinyStyleGenerator" and spec["kwargs"]["z_dim"] == 6
    assert spec["call"] == {"kwargs": {"noise_mode": "const", "c": None, "truncation_psi": 0.5}}
    _, original, _ = pipeline_terms(ModelOptions(snapshot, trust_pickle=True, code_path=(FAMILY_CODE,),
                                                 call_kwargs={"truncation_psi": 0.5}))
    _, again, (resolved, _) = pipeline_terms(ModelOptions(target, code_path=(FAMILY_CODE,)))
    assert resolved.call_origin["kwargs"]["truncation_psi"] == "metadata"
    assert torch.allclose(original, again, rtol=1e-6, atol=0)
