"""``hf://owner/repo`` models from the Hugging Face cache, through the real ``huggingface_hub`` API.

Nothing is downloaded: ``PyTorchModelHubMixin.save_pretrained`` writes the repository's files
(model.safetensors, config.json) into a folder, ``hub_cache`` lays them out as huggingface_hub's
cache does (blobs, snapshots/<commit> links, refs/main), and every test runs with
HF_HUB_OFFLINE=1. Needs the ``hub`` extra (huggingface_hub): skipped without it.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml

from genentropy_cli import estimate_entropy
from genentropy_cli.core.latents import make_latent_spec
from genentropy_cli.models.loading import load_model
from tests.test_cli import assert_one_line_error

pytest.importorskip("huggingface_hub")

USER_CODE = '''
import torch
from huggingface_hub import PyTorchModelHubMixin


class HubGenerator(torch.nn.Module, PyTorchModelHubMixin):
    """A generator published with PyTorchModelHubMixin: its constructor's arguments go to config.json."""

    def __init__(self, latent_dim: int = 4, hidden: int = 32, output_dim: int = 12):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(latent_dim, hidden), torch.nn.Tanh(),
                                       torch.nn.Linear(hidden, output_dim), torch.nn.Sigmoid())

    def forward(self, latents):
        return self.net(latents)
'''
SPEC = {"import": "hubgen:HubGenerator", "latent": {"shape": [3], "distribution": "uniform"}}  # kwargs: config.json
RUN = ("-n", "150", "--dtype", "float64", "--seed", "2", "-s", "1e-3", "--json", "--quiet")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(cache: Path, repo_id: str, files: dict[str, Path], commit: str = COMMIT) -> Path:
    """Lay ``files`` (name in the repository -> file) out as huggingface_hub's cache does:
    models--OWNER--NAME/blobs/<sha256>, snapshots/<commit>/<name> linking to the blob, refs/main."""
    repository = cache / f"models--{repo_id.replace('/', '--')}"
    (repository / "blobs").mkdir(parents=True, exist_ok=True)
    (repository / "refs").mkdir(exist_ok=True)
    for name, source in files.items():
        data = source.read_bytes()
        blob = repository / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = repository / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repository / "refs" / "main").write_text(commit)
    return repository


@pytest.fixture
def published(tmp_path, monkeypatch):
    """A generator saved with save_pretrained, its genentropy.yaml, all in an offline cache."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "hubgen.py").write_text(USER_CODE)
    monkeypatch.syspath_prepend(str(code))
    monkeypatch.delitem(sys.modules, "hubgen", raising=False)
    import hubgen

    torch.manual_seed(3)
    module = hubgen.HubGenerator(latent_dim=3, hidden=10, output_dim=8).eval()  # not the defaults: config.json says
    saved = tmp_path / "saved"
    module.save_pretrained(saved)
    (saved / "genentropy.yaml").write_text(yaml.safe_dump(SPEC))
    cache = tmp_path / "cache"
    hub_cache(cache, "someone/hubgen", {path.name: path for path in saved.iterdir() if path.is_file()})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield module, code, cache
    sys.modules.pop("hubgen", None)


def reference(module: torch.nn.Module) -> float:
    """The entropy of the module itself, as the runs below compute it."""
    return estimate_entropy(module, make_latent_spec(3, "uniform"), scales=(1e-3,), n_samples=150, dtype="float64",
                            seed=2).estimates[0].entropy


def test_a_mixin_repository_loads_from_the_cache_with_its_spec_and_config(run_cli, published):
    module, code, _ = published
    assert {"model.safetensors", "config.json"} <= {path.name for path in published[2].rglob("*") if path.is_symlink()}
    expected = reference(module)
    for url in ("hf://someone/hubgen", f"hf://someone/hubgen/model.safetensors@{COMMIT}", "hf://someone/hubgen@main"):
        result = run_cli("estimate", url, "--code-path", code, *RUN)
        assert result.exit_code == 0, (url, result.stderr)
        document = result.json()
        assert document["estimates"][0]["entropy"] == pytest.approx(expected, rel=1e-10, abs=0), url
        assert document["model"]["path"] == url and document["model"]["file"].endswith("model.safetensors")
        assert document["model"]["spec_source"].startswith("hf://someone/hubgen/genentropy.yaml")
        assert document["model"]["latent_source"] == {"shape": "spec", "distribution": "spec"}


def test_hf_home_is_honoured_and_inspect_shows_the_cached_file(run_cli, published, monkeypatch, tmp_path):
    module, code, cache = published
    home = tmp_path / "home"
    home.mkdir()
    cache.rename(home / "hub")
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(home))
    result = run_cli("inspect", "hf://someone/hubgen", "--code-path", code, "--json")
    assert result.exit_code == 0, result.stderr
    model = result.json()["model"]
    assert model["path"] == "hf://someone/hubgen" and model["file"].startswith(str(home / "hub"))
    assert model["architecture"] == "hubgen:HubGenerator" and model["output_shape"] == [8]


def test_convert_writes_one_self_describing_file_with_the_config_kwargs(run_cli, published, tmp_path):
    module, code, _ = published
    target = tmp_path / "hubgen.safetensors"
    result = run_cli("convert", "hf://someone/hubgen", target, "--code-path", code, "--json")
    assert result.exit_code == 0, result.stderr
    spec = result.json()["spec"]
    assert spec["import"] == "hubgen:HubGenerator" and spec["kwargs"] == {"latent_dim": 3, "hidden": 10, "output_dim": 8}
    assert result.json()["weights_identical"]
    again = run_cli("estimate", target, "--code-path", code, *RUN)
    assert again.exit_code == 0, again.stderr
    assert again.json()["estimates"][0]["entropy"] == pytest.approx(reference(module), rel=1e-10, abs=0)
    assert torch.equal(load_model(target, code_path=[code]).decoder.net[0].weight, module.net[0].weight)


def test_hub_refusals_say_what_to_do(run_cli, published, tmp_path, monkeypatch):
    _, code, cache = published
    assert_one_line_error(run_cli("estimate", "hf://someone/elsewhere", "--code-path", code),
                          "hf://someone/elsewhere is not in the Hugging Face cache", str(cache), "HF_HUB_OFFLINE is set")
    assert_one_line_error(run_cli("estimate", "hf://someone/hubgen/netG.pt"), "has no file netG.pt",
                          "config.json", "model.safetensors")
    assert_one_line_error(run_cli("estimate", "hf://datasets/someone/hubgen"), "datasets hold no models")
    assert_one_line_error(run_cli("estimate", "hf://someone"), "not a Hugging Face model reference",
                          "hf://owner/repo/FILE@REVISION")
    hub_cache(cache, "someone/two", {"a.safetensors": cache.parent / "saved" / "model.safetensors",
                                     "b.onnx": cache.parent / "saved" / "config.json"})
    assert_one_line_error(run_cli("estimate", "hf://someone/two"), "holds several model files (a.safetensors, b.onnx)",
                          "name one, e.g. hf://someone/two/a.safetensors")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "model.safetensors").write_bytes((cache / "models--someone--hubgen" / "snapshots" / COMMIT /
                                              "model.safetensors").read_bytes())
    hub_cache(cache, "someone/bare", {"model.safetensors": bare / "model.safetensors"})
    assert_one_line_error(run_cli("estimate", "hf://someone/bare"), "hf://someone/bare holds weights but no spec",
                          "add genentropy.yaml to the repository", "--spec FILE")


def test_an_unreachable_hub_fails_fast_and_a_cached_model_still_loads(run_cli, published, monkeypatch):
    """No network: a model not in the cache is a one-line error within seconds (huggingface_hub
    alone retries for about 30 s); a cached one loads without HF_HUB_OFFLINE."""
    import socket
    import time

    with socket.socket() as probe:  # a port nothing listens on: the connection is refused at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    assert_one_line_error(run_cli("inspect", "hf://someone/elsewhere"), "the Hub could not be reached",
                          "HF_HUB_OFFLINE=1")
    assert time.monotonic() - started < 10
    cached = run_cli("estimate", "hf://someone/hubgen", "--code-path", published[1], "-n", "50", "--json", "--quiet")
    assert cached.exit_code == 0, cached.stderr
