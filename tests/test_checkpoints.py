"""The files users hold: training checkpoints with G and D (Lightning's, the DCGAN example's),
pickles saved from a notebook, StyleGAN-style pickled dicts of modules, specs without a latent
section. Each gives the entropy of the module it holds (float64, 1e-10 relative), in every
command, and each refusal names the flag that fixes it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from genentropy_cli import estimate_entropy
from genentropy_cli.core.latents import make_latent_spec
from genentropy_cli.models.architectures import MLPDecoder
from genentropy_cli.models.specs import build_from_spec, save_safetensors, write_spec_file
from tests.test_cli import assert_one_line_error

KWARGS = {"latent_dim": 3, "output_dim": 6, "hidden": [8], "activation": "tanh"}
SPEC = {"architecture": "mlp", "kwargs": KWARGS}  # no latent: section: the size comes from kwargs.latent_dim
RUN = ("-n", "120", "--dtype", "float64", "--seed", "4", "-s", "1e-3", "--json", "--quiet")
RELATIVE = 1e-10


def entropy_of(module: torch.nn.Module, dim: int = 3) -> float:
    return estimate_entropy(module, make_latent_spec(dim, "normal"), scales=(1e-3,), n_samples=120, dtype="float64",
                            seed=4).estimates[0].entropy


def estimated(run_cli, *arguments) -> dict:
    result = run_cli("estimate", *arguments, *RUN)
    assert result.exit_code == 0, result.stderr
    return result.json()


def gan_pair(seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(seed)
    return build_from_spec(SPEC), torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.LeakyReLU(), torch.nn.Linear(4, 1))


def lightning_layout(generator: torch.nn.Module, discriminator: torch.nn.Module) -> dict:
    """What ``Trainer.save_checkpoint`` writes (Lightning 2.x), written by hand: the module's
    state dict with its attributes as prefixes, an Adam state, loop counters, hyper-parameters."""
    optimizer = torch.optim.Adam([*generator.parameters(), *discriminator.parameters()])
    discriminator(generator(torch.randn(4, 3))).mean().backward()
    optimizer.step()
    state = {**{f"generator.{name}": tensor for name, tensor in generator.state_dict().items()},
             **{f"discriminator.{name}": tensor for name, tensor in discriminator.state_dict().items()}}
    return {"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.6.6", "state_dict": state,
            "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 4, "completed": 3}}}},
            "callbacks": {}, "optimizer_states": [optimizer.state_dict()], "lr_schedulers": [],
            "hparams_name": "kwargs", "hyper_parameters": {"lr": 0.001, "latent_dim": 3}}


@pytest.fixture(scope="module")
def lightning_checkpoint(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """A checkpoint written by Lightning itself (one training step), or skipped without it."""
    lightning = pytest.importorskip("lightning")

    class GAN(lightning.LightningModule):
        def __init__(self, lr: float = 1e-2):
            super().__init__()
            self.save_hyperparameters()
            self.generator, self.discriminator = gan_pair(1)

        def training_step(self, batch, index):
            return self.discriminator(self.generator(batch[0])).mean()

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    folder = tmp_path_factory.mktemp("lightning")
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 3)), batch_size=4)
    trainer = lightning.Trainer(max_steps=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, default_root_dir=folder)
    gan = GAN()
    trainer.fit(gan, data)
    trainer.save_checkpoint(folder / "last.ckpt")
    return gan.generator.eval(), folder / "last.ckpt"


@pytest.mark.filterwarnings("ignore:.*LeafSpec")  # inside Lightning 2.6 on torch 2.13
def test_lightning_checkpoint_written_by_lightning(run_cli, lightning_checkpoint, tmp_path):
    generator, path = lightning_checkpoint
    spec = tmp_path / "generator.yaml"
    write_spec_file(SPEC, spec)
    assert_one_line_error(run_cli("estimate", path, "--spec", spec), "holds several sub-models",
                          "the tensors at state_dict.generator fit the spec's architecture",
                          "--select state_dict.generator", 'weights: {key: state_dict, prefix: "generator."}')
    document = estimated(run_cli, path, "--spec", spec, "--select", "state_dict.generator")
    assert document["estimates"][0]["entropy"] == pytest.approx(entropy_of(generator), rel=RELATIVE, abs=0)
    assert document["model"]["selected"] == {"key": "state_dict", "prefix": "generator."}
    assert document["model"]["latent_source"]["shape"] == "architecture"
    target = tmp_path / "generator.safetensors"
    converted = run_cli("convert", path, target, "--spec", spec, "--select", "state_dict.generator", "--json")
    assert converted.exit_code == 0 and converted.json()["weights_identical"], converted.stderr
    assert estimated(run_cli, target)["estimates"][0]["entropy"] == pytest.approx(entropy_of(generator), rel=RELATIVE,
                                                                                  abs=0)


def test_hand_written_lightning_layout_in_every_command(run_cli, tmp_path):
    generator, discriminator = gan_pair()
    path = tmp_path / "last.ckpt"
    torch.save(lightning_layout(generator, discriminator), path)
    # the spec: key + strip_prefix keeps D's tensors too; the refusal names the selection that fits
    write_spec_file({**SPEC, "weights": {"key": "state_dict", "strip_prefix": "generator."}}, tmp_path / "last.yaml")
    assert_one_line_error(run_cli("estimate", path), "unexpected discriminator.", "--select state_dict.generator")
    write_spec_file({**SPEC, "weights": {"key": "state_dict", "prefix": "generator."}}, tmp_path / "last.yaml")
    expected = entropy_of(generator.eval())
    assert estimated(run_cli, path)["estimates"][0]["entropy"] == pytest.approx(expected, rel=RELATIVE, abs=0)

    sweep = run_cli("sweep-scale", path, "-n", "60", "--scales", "1e-3,1e-1", "--json", "-q")
    samples = run_cli("samples", path, "-n", "30", "--lowest", "1", "--highest", "1", "--json", "-q")
    assert sweep.exit_code == 0 and samples.exit_code == 0, sweep.stderr + samples.stderr
    target = tmp_path / "generator.safetensors"
    converted = run_cli("convert", path, target, "--json")
    assert converted.exit_code == 0, converted.stderr
    assert converted.json()["spec"]["architecture"] == "mlp" and "weights" not in converted.json()["spec"]
    assert converted.json()["spec"]["latent"] == {"shape": [3], "distribution": "normal"}
    assert estimated(run_cli, target)["estimates"][0]["entropy"] == pytest.approx(expected, rel=RELATIVE, abs=0)
    compared = run_cli("compare", path, target, "-n", "100", "--dtype", "float64", "--json", "-q")
    assert compared.exit_code == 0, compared.stderr
    assert abs(compared.json()["pairs"][0]["difference"]) <= 1e-10


def test_inspect_lists_the_sub_models_and_the_lines_that_choose_each(run_cli, tmp_path):
    generator, discriminator = gan_pair()
    path = tmp_path / "last.ckpt"
    torch.save(lightning_layout(generator, discriminator), path)
    listing = run_cli("inspect", path, "--json")  # no spec yet: the contents are the report
    assert listing.exit_code == 0, listing.stderr
    assert "no model built yet" in listing.stderr
    document = listing.json()
    assert document["model"] is None and "no spec" in document["load_error"]
    assert "with weights: naming its sub-model" in document["load_error"]
    candidates = {item["select"]: item for item in document["checkpoint"]["candidates"]}
    assert set(candidates) == {"state_dict", "state_dict.generator", "state_dict.discriminator"}
    generator_values = sum(tensor.numel() for tensor in generator.state_dict().values())
    assert candidates["state_dict.generator"]["values"] == generator_values
    assert candidates["state_dict.generator"]["spec_lines"] == 'weights: {key: state_dict, prefix: "generator."}'
    others = {item["key"]: item for item in document["checkpoint"]["other_entries"]}
    assert others["optimizer_states.0"]["kind"] == "optimiser state" and others["epoch"]["detail"] == "3"
    assert others["hyper_parameters.lr"]["detail"] == "0.001"

    write_spec_file(SPEC, tmp_path / "last.yaml")
    table = run_cli("inspect", path, "--select", "state_dict.generator")
    assert table.exit_code == 0, table.stderr
    assert "fits spec" in table.stdout and "optimiser state" in table.stdout and "state_dict.discriminator" in table.stdout
    fits = {item["select"]: item["fits_spec"] for item in
            run_cli("inspect", path, "--select", "state_dict.generator", "--json").json()["checkpoint"]["candidates"]}
    assert fits == {"state_dict": False, "state_dict.generator": True, "state_dict.discriminator": False}


def test_selection_refusals_name_what_is_there(run_cli, tmp_path):
    generator, discriminator = gan_pair()
    path = tmp_path / "last.ckpt"
    torch.save(lightning_layout(generator, discriminator), path)
    write_spec_file(SPEC, tmp_path / "last.yaml")
    assert_one_line_error(run_cli("estimate", path, "--select", "netG"), "no entry 'netG'", "keys epoch, global_step",
                          "genentropy inspect")
    assert_one_line_error(run_cli("estimate", path, "--select", "state_dict.gen"), "no tensors named gen.*",
                          "generator., discriminator.")
    write_spec_file(SPEC, tmp_path / "netG.yaml")
    torch.save(generator.state_dict(), tmp_path / "netG.pth")
    assert_one_line_error(run_cli("estimate", tmp_path / "netG.pth", "--select", "main"), "no tensors named main.*",
                          "its names start with net.")
    assert_one_line_error(run_cli("estimate", tmp_path / "netG.pth", "--select", "net"), "missing net.0.bias",
                          "the whole file fits the spec's architecture: drop --select")
    torch.save({"epoch": 3, "optimizer": {"state": {}, "param_groups": []}}, tmp_path / "empty.pth")
    assert_one_line_error(run_cli("estimate", tmp_path / "empty.pth", "--spec", tmp_path / "netG.yaml"),
                          "holds no model weights", "keys epoch, optimizer", "--select KEY")
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(generator), scripted)
    assert_one_line_error(run_cli("estimate", scripted, "--select", "net"), "is torchscript", "drop --select")
    listing = run_cli("inspect", tmp_path / "netG.pth", "--select", "main")  # the listing, and why nothing was built
    assert listing.exit_code == 0 and "no tensors named main.*" in listing.stderr and "(the whole file)" in listing.stdout


def test_a_safetensors_file_holding_g_and_d_is_selected_by_prefix(run_cli, tmp_path):
    generator, discriminator = gan_pair()
    both = torch.nn.ModuleDict({"generator": generator, "discriminator": discriminator})
    path = save_safetensors(both, tmp_path / "gan.safetensors", SPEC)
    assert_one_line_error(run_cli("estimate", path), "unexpected discriminator.0.bias",
                          "the tensors at generator fit the spec's architecture: pass --select generator",
                          'weights: {prefix: "generator."}')
    document = estimated(run_cli, path, "--select", "generator")
    assert document["estimates"][0]["entropy"] == pytest.approx(entropy_of(generator.eval()), rel=RELATIVE, abs=0)


NOTEBOOK = '''
import sys
import torch


class Generator(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.main = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Softplus(), torch.nn.Linear(16, 9))

    def forward(self, z):
        return self.main(z)
'''


@pytest.fixture
def notebook_pickle(tmp_path) -> tuple[Path, Path, torch.nn.Module]:
    """``torch.save(netG)`` run as a script (its class lives in __main__), and the same class in
    code/mymodels.py as the user copies it there."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "mymodels.py").write_text(NOTEBOOK)
    script = tmp_path / "train.py"
    script.write_text(NOTEBOOK + textwrap.dedent('''
        torch.manual_seed(0)
        netG = Generator()
        torch.save(netG, sys.argv[1])
        torch.save(netG.state_dict(), sys.argv[2])
    '''))
    subprocess.run([sys.executable, script, tmp_path / "netG.pth", tmp_path / "weights.pt"], check=True)
    namespace: dict = {}
    exec(NOTEBOOK, namespace)
    original = namespace["Generator"]()
    original.load_state_dict(torch.load(tmp_path / "weights.pt"))
    return tmp_path / "netG.pth", code, original.eval()


def test_a_notebook_pickle_loads_with_class_map(run_cli, notebook_pickle, tmp_path, monkeypatch):
    path, code, original = notebook_pickle
    monkeypatch.delitem(sys.modules, "mymodels", raising=False)
    mapping = ("--class-map", "__main__.Generator=mymodels:Generator")
    assert_one_line_error(run_cli("estimate", path), "pickled __main__.Generator", "--trust-pickle --code-path DIR",
                          "--class-map __main__.Generator=mymodels:Generator")
    assert_one_line_error(run_cli("estimate", path, "--trust-pickle"), "(module __main__)",
                          "copy the class into a file DIR/mymodels.py",
                          "--trust-pickle --code-path DIR --class-map __main__.Generator=mymodels:Generator")
    assert_one_line_error(run_cli("estimate", path, "--trust-pickle", *mapping), "mapped to mymodels:Generator",
                          "--code-path DIR")
    assert_one_line_error(run_cli("estimate", path, "--trust-pickle", "--class-map", "Generator:mymodels"),
                          "--class-map takes OLD=NEW")
    document = estimated(run_cli, path, "--trust-pickle", "--code-path", code, *mapping, "--latent-dim", "4")
    assert document["estimates"][0]["entropy"] == pytest.approx(entropy_of(original, 4), rel=RELATIVE, abs=0)
    assert document["model"]["format"] == "pickle"
    inspected = run_cli("inspect", path, "--trust-pickle", "--code-path", code, *mapping, "--latent-dim", "4", "--json")
    assert inspected.exit_code == 0, inspected.stderr
    assert inspected.json()["parameters"]["count"] == sum(p.numel() for p in original.parameters())
    assert "runs code named in" in inspected.stderr  # the trusted-pickle warning

    target = tmp_path / "netG.safetensors"
    converted = run_cli("convert", path, target, "--trust-pickle", "--code-path", code, *mapping, "--latent-dim", "4",
                        "--json")
    assert converted.exit_code == 0, converted.stderr
    assert converted.json()["spec"]["import"] == "mymodels:Generator"
    again = estimated(run_cli, target, "--code-path", code)
    assert again["estimates"][0]["entropy"] == pytest.approx(entropy_of(original, 4), rel=RELATIVE, abs=0)


def test_a_pickled_class_that_moved_is_mapped_to_its_new_module(run_cli, tmp_path, monkeypatch):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    source = "from genentropy_cli.models.architectures import MLPDecoder\n\n\nclass Net(MLPDecoder):\n    pass\n"
    (old / "oldnets.py").write_text(source)
    (new / "newnets.py").write_text(source)
    monkeypatch.syspath_prepend(str(old))
    monkeypatch.delitem(sys.modules, "oldnets", raising=False)
    import oldnets

    torch.manual_seed(6)
    module = oldnets.Net(**KWARGS).eval()
    torch.save(module, tmp_path / "net.pt")
    monkeypatch.delitem(sys.modules, "oldnets")
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry != str(old)])
    assert_one_line_error(run_cli("estimate", tmp_path / "net.pt", "--trust-pickle"), "names oldnets.Net",
                          "--code-path DIR", "--class-map oldnets.Net=module:Class")
    document = estimated(run_cli, tmp_path / "net.pt", "--trust-pickle", "--code-path", new, "--class-map",
                         "oldnets=newnets", "--latent-dim", "3")
    assert document["estimates"][0]["entropy"] == pytest.approx(entropy_of(module), rel=RELATIVE, abs=0)
    sys.modules.pop("newnets", None)


def test_a_pickled_dict_of_modules_is_selected_by_key(run_cli, tmp_path):
    torch.manual_seed(2)
    generator = MLPDecoder(**KWARGS).eval()
    path = tmp_path / "network-snapshot.pkl"
    torch.save({"G_ema": generator, "D": torch.nn.Linear(6, 1), "augment": {"p": 0.2}}, path)
    document = estimated(run_cli, path, "--trust-pickle", "--select", "G_ema", "--latent-dim", "3")
    assert document["estimates"][0]["entropy"] == pytest.approx(entropy_of(generator), rel=RELATIVE, abs=0)
    chosen = estimated(run_cli, path, "--trust-pickle", "--latent-dim", "3")  # a snapshot's G_ema by default
    assert chosen["model"]["selected"] == {"key": "G_ema"} and "--select G" in chosen["model"]["notes"][0]
    assert chosen["estimates"][0]["entropy"] == document["estimates"][0]["entropy"]
    listing = run_cli("inspect", path, "--trust-pickle", "--json")
    assert listing.exit_code == 0, listing.stderr
    classes = {item["select"]: item["class"] for item in listing.json()["checkpoint"]["candidates"]}
    assert classes == {"G_ema": "MLPDecoder", "D": "Linear"}
    (tmp_path / "kwargs.yaml").write_text(yaml.safe_dump({"kwargs": KWARGS}))
    target = tmp_path / "G_ema.safetensors"
    converted = run_cli("convert", path, target, "--trust-pickle", "--select", "G_ema", "--spec",
                        tmp_path / "kwargs.yaml", "--latent-dim", "3", "--json")
    assert converted.exit_code == 0, converted.stderr
    assert converted.json()["spec"]["architecture"] == "mlp"
    assert estimated(run_cli, target)["estimates"][0]["entropy"] == pytest.approx(entropy_of(generator), rel=RELATIVE)


def test_a_spec_without_latent_takes_the_size_from_a_built_in_architecture(run_cli, tmp_path):
    torch.manual_seed(5)
    dcgan = build_from_spec({"architecture": "dcgan-64", "kwargs": {"ngf": 2, "nc": 1}}).eval()
    path = save_safetensors(dcgan, tmp_path / "dcgan.safetensors", {"architecture": "dcgan-64",
                                                                       "kwargs": {"ngf": 2, "nc": 1}})
    result = run_cli("inspect", path, "--json", "--probe-latents", "2")
    assert result.exit_code == 0, result.stderr
    model = result.json()["model"]
    assert model["latent_shape"] == [100] and model["latent_source"]["shape"] == "architecture"  # dcgan-64's default
    module = build_from_spec(SPEC)
    weights = tmp_path / "user.pth"
    torch.save(module.state_dict(), weights)
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "usernet.py").write_text("from genentropy_cli.models.architectures import MLPDecoder as Net\n")
    write_spec_file({"import": "usernet:Net", "kwargs": KWARGS}, tmp_path / "user.yaml")
    assert_one_line_error(run_cli("estimate", weights, "--code-path", tmp_path / "code"),
                          "does not record its latent size", "--latent-dim")
