"""Output transforms: --output-range shifts the s -> 0 entropy by exactly d log(1/(HI-LO)),
--output-select picks one output of a tuple/dict decoder; both are recorded in the JSON."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_cli import assert_one_line_error

from genentropy_cli import estimate_entropy
from genentropy_cli.core.latents import make_latent_spec
from genentropy_cli.core.references import HALF_SPHERE_ENTROPY
from genentropy_cli.errors import InputError
from genentropy_cli.models.loading import save_torchscript
from genentropy_cli.models.specs import build_from_spec, write_spec_file
from genentropy_cli.models.transforms import OutputTransform, parse_output_range, parse_output_select

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
DCGAN_SPEC = {"architecture": "dcgan-64", "kwargs": {"latent_dim": 100, "ngf": 2, "nc": 3},
              "latent": {"shape": [100, 1, 1], "distribution": "normal"}}


def test_dcgan_from_a_spec_and_output_range_shifts_entropy_by_d_log_half(run_cli, tmp_path):
    torch.manual_seed(3)
    module = build_from_spec(DCGAN_SPEC).eval()
    assert module(torch.zeros(2, 100, 1, 1)).shape == (2, 3, 64, 64)
    torch.save(module.state_dict(), tmp_path / "netG.pth")  # a state dict, as DCGAN code saves it
    spec = write_spec_file(DCGAN_SPEC, tmp_path / "dcgan.yaml")
    args = ["estimate", tmp_path / "netG.pth", "--spec", spec, "-n", "3", "--dtype",
            "float64", "-s", "1e-7", "--json", "--quiet"]
    plain = run_cli(*args)
    mapped = run_cli(*args, "--output-range", "-1,1")
    assert plain.exit_code == 0 and mapped.exit_code == 0, (plain.stderr, mapped.stderr)
    plain_doc, mapped_doc = plain.json(), mapped.json()
    assert plain_doc["model"]["output_shape"] == [3, 64, 64] and plain_doc["model"]["latent_shape"] == [100, 1, 1]
    assert mapped_doc["model"]["output_transform"]["range"] == [-1.0, 1.0]
    assert mapped_doc["model"]["output_transform"]["factor"] == 0.5
    assert mapped_doc["model"]["output_transform"]["source"] == {"range": "flag"}
    shift = mapped_doc["estimates"][0]["entropy"] - plain_doc["estimates"][0]["entropy"]
    # same latents (same seed): exact up to the regularisation 1/2 sum log((lambda + 4 s^2)/(lambda + s^2))
    assert shift == pytest.approx(100 * math.log(0.5), abs=1e-6)
    assert mapped_doc["diagnostics"]["smallest_singular_value"] > 1e-4  # so s = 1e-7 is negligible


def test_output_range_on_torchscript_keeps_jacobians_exact_and_none_switches_a_spec_off(run_cli, tmp_path):
    """A transform wraps the TorchScript module; every batch must still get exact tangents."""
    args = ["estimate", SAMPLES / "half_sphere.pt", "-n", "2000", "--batch-size", "250", "--dtype", "float64",
            "--json", "--quiet"]
    result = run_cli(*args, "--output-range", "0,4")
    assert result.exit_code == 0, result.stderr
    item = result.json()["estimates"][0]
    assert item["entropy"] == pytest.approx(HALF_SPHERE_ENTROPY + 2 * math.log(0.25), abs=2e-4)
    assert item["std"] < 1e-3  # a zero Jacobian in a later batch would give -inf or a huge spread
    write_spec_file({"output": {"range": [0, 4]}}, tmp_path / "range.yaml")
    from_spec = run_cli(*args, "--spec", tmp_path / "range.yaml").json()
    assert from_spec["estimates"][0]["entropy"] == pytest.approx(item["entropy"], rel=1e-12)
    assert from_spec["model"]["output_transform"]["source"] == {"range": "spec"}
    switched_off = run_cli(*args, "--spec", tmp_path / "range.yaml", "--output-range", "none").json()
    assert switched_off["estimates"][0]["entropy"] == pytest.approx(HALF_SPHERE_ENTROPY, abs=2e-4)


class TupleDecoder(torch.nn.Module):
    def forward(self, z: torch.Tensor):
        return 3.0 * z.repeat(1, 2), z[:, :1]


class DictDecoder(torch.nn.Module):
    def forward(self, z: torch.Tensor):
        return {"image": 3.0 * z.repeat(1, 2), "logits": z[:, :1]}


@pytest.mark.parametrize("decoder,key", [(TupleDecoder(), "0"), (DictDecoder(), "image")])
def test_output_select_picks_the_output(run_cli, tmp_path, decoder, key):
    path = save_torchscript(decoder, tmp_path / "multi.pt", latent=make_latent_spec(2))
    assert_one_line_error(run_cli("estimate", path), "--output-select")
    result = run_cli("estimate", path, "--output-select", key, "-n", "500", "--dtype", "float64", "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    document = result.json()
    assert document["model"]["output_transform"]["select"] == parse_output_select(key)
    # x = 3 (z, z): J^T J = 18 I, so H = log(2 pi e) + 2 * 1/2 log 18 (s negligible)
    exact = math.log(2 * math.pi * math.e) + math.log(18.0)
    item = document["estimates"][0]
    assert abs(item["entropy"] - exact) <= 4 * item["stderr"] + 1e-9
    assert_one_line_error(run_cli("estimate", path, "--output-select", "7"), "--output-select 7")


def test_transform_parsing_and_api():
    assert parse_output_range("-1,1") == (-1.0, 1.0)
    assert parse_output_range([0, 255]) == (0.0, 255.0)
    assert parse_output_range("none") is None
    for bad in ("1,-1", "a,b", "1", "0,inf"):
        with pytest.raises(InputError, match="output-range"):  # exit 2 and one line at the CLI
            parse_output_range(bad)
    assert parse_output_select("2") == 2 and parse_output_select("image") == "image"
    transform = OutputTransform(range=(-1.0, 1.0))
    assert transform.entropy_shift(62) == pytest.approx(62 * math.log(0.5))
    wrapped = OutputTransform(select=0, range=(0.0, 2.0)).apply(TupleDecoder())
    result = estimate_entropy(wrapped, 2, n_samples=200, dtype="float64", scales=[1e-8])
    exact = math.log(2 * math.pi * math.e) + math.log(18.0) + 2 * math.log(0.5)
    assert abs(result.estimates[0].entropy - exact) <= 4 * result.estimates[0].stderr + 1e-9


def test_a_checkpoint_never_resumes_under_another_output_transform():
    from genentropy_cli.core.references import HalfSphereRadial
    from genentropy_cli.run.checkpoint import decoder_fingerprint

    plain = HalfSphereRadial()
    prints = {decoder_fingerprint(OutputTransform(range=rng, select=sel).apply(plain))
              for rng, sel in [(None, None), ((-1.0, 1.0), None), ((0.0, 1.0), None), ((-1.0, 1.0), 0)]}
    assert len(prints) == 4
