"""The trained sample decoders: present, self-describing, loadable from the path alone, sane.

The sanity checks are about the files, not about numbers the estimator produced: the decoded
images of each model must look like MNIST on average (mean intensity near MNIST's 0.13), vary
between latents (no collapse), and the eval-mode BatchNorm statistics must fit the prior.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import pytest
import torch

from genentropy_cli.models.loading import load_model, resolve_latent_spec
from genentropy_cli.models.specs import read_safetensors

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_models"
TABLE_2 = ("vae", "gan", "wgan-gp", "wgan")
TABLE_3 = tuple(f"vae-le-{k}" for k in range(10))
EXTRAS = ("wgan-gp-epoch100",) + tuple(f"vae-le-{k}-long" for k in range(9))
ALL = TABLE_2 + TABLE_3 + EXTRAS
MAX_TOTAL_BYTES = 40 * 1024**2


def model_path(name: str) -> Path:
    return SAMPLE_DIR / f"{name}.safetensors"


def test_every_trained_model_is_committed_and_listed():
    readme = (SAMPLE_DIR / "README.md").read_text()
    for name in ALL:
        assert model_path(name).is_file(), f"missing {model_path(name)}: run scripts/train_sample_models.py"
        assert f"`{name}.safetensors`" in readme
    assert sum(path.stat().st_size for path in SAMPLE_DIR.iterdir()) <= MAX_TOTAL_BYTES


@pytest.mark.parametrize("name", ALL)
def test_loads_with_no_flags_and_decodes_digit_like_images(name):
    tensors, spec = read_safetensors(model_path(name))
    assert spec["architecture"] == "infogan-mnist" and spec["kwargs"]["latent_dim"] == 62
    assert all(tensor.dtype in (torch.float16, torch.int64) for tensor in tensors.values())  # stored as float16
    loaded = load_model(model_path(name))
    latent, origin = resolve_latent_spec(loaded)
    assert origin == {"shape": "metadata", "distribution": "metadata"}
    assert latent.dim == 62
    assert latent.distribution.name == ("normal" if name.startswith("vae") else "uniform")
    decoder = loaded.decoder
    assert not decoder.training
    assert all(parameter.dtype == torch.float32 for parameter in decoder.parameters())  # cast back on loading
    generator = torch.Generator().manual_seed(0)
    latents = latent.distribution.sample(generator, 64, 62).float()
    with torch.no_grad():
        images = decoder(latents)
    assert images.shape == (64, 1, 28, 28)
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert 0.05 < float(images.mean()) < 0.3  # MNIST's mean intensity is 0.13
    assert float(images.std(dim=0).mean()) > 0.05  # different latents give different images
    # eval-mode BatchNorm statistics fit the prior: on 512 prior latents the eval-mode outputs
    # match the outputs with batch statistics (0.004-0.009 mean abs for these files; 0.05-0.25
    # with the statistics reset)
    latents = latent.distribution.sample(generator, 512, 62).float()
    with torch.no_grad():
        batch_statistics = copy.deepcopy(decoder).train()(latents)
        assert float((decoder(latents) - batch_statistics).abs().mean()) < 0.02
    subset = re.match(r"vae-le-(\d)", name)
    assert list(spec["training"]["digits"]) == list(range(int(subset.group(1)) + 1 if subset else 10))


@pytest.mark.slow
def test_table_2_the_vae_has_the_lowest_entropy():
    """The paper's Table 2 finding, on our models (docs/reproducing-the-paper.md gives the command)."""
    from genentropy_cli.jobs.compare import compare_models

    loaded = [load_model(model_path(name)) for name in TABLE_2]
    specs = [resolve_latent_spec(item)[0] for item in loaded]
    result = compare_models([item.decoder for item in loaded], specs, names=list(TABLE_2),
                            n_samples=int(os.environ.get("GENENTROPY_TABLE2_N", "2000")), device="cpu")
    vae = result.models[0]
    assert vae.ranks == [4]
    for other in TABLE_2[1:]:
        assert result.pair(other, "vae").difference > 0 and result.pair(other, "vae").significant
