"""ONNX graphs written by ``torch.onnx.export`` load, estimate, inspect and convert like the module
they were exported from; graphs onnx2torch cannot convert are refused with the export flag that
avoids the problem. Needs the ``onnx`` extra (onnx, onnx2torch): skipped without it.

Precision: the legacy exporter (``dynamo=False``) stores the module's float32 weights unchanged
and onnx2torch maps each node onto the torch operation it came from, so in float64 the
converted graph computes what the module computes up to round-off: the entropies agree to
1e-10 relative (the same bound as every other format).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from genentropy_cli import estimate_entropy
from genentropy_cli.core.latents import make_latent_spec
from genentropy_cli.models.loading import load_model
from genentropy_cli.models.specs import write_spec_file
from tests.test_cli import assert_one_line_error
from tests.test_formats import SPEC, trained_generator

onnx = pytest.importorskip("onnx")

RUN = ("-n", "200", "--batch-size", "64", "--dtype", "float64", "--seed", "5", "-s", "0.1", "-s", "1e-4",
       "--latent-distribution", "uniform", "--json", "--quiet")
RELATIVE = 1e-10


def export(module: torch.nn.Module, path: Path, dynamic: bool = True, **settings) -> Path:
    """``torch.onnx.export`` as a user calls it: one latent input named z, batch dimension dynamic."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.rand(2, 5) * 2 - 1,), str(path), input_names=["z"], output_names=["x"],
                          dynamic_axes={"z": {0: "batch"}, "x": {0: "batch"}} if dynamic else None,
                          **{"dynamo": False, "opset_version": 13, **settings})
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    module = trained_generator()
    try:
        load_model(export(module, tmp_path_factory.mktemp("onnx") / "probe.onnx"))
    except Exception as error:  # the extra is half installed: onnx2torch missing
        pytest.skip(f"the onnx extra is not usable here: {error}")
    return module, export(module, tmp_path_factory.mktemp("onnx") / "generator.onnx")


def reference(module: torch.nn.Module):
    return estimate_entropy(module, make_latent_spec(5, "uniform"), scales=(1e-1, 1e-4), n_samples=200,
                            batch_size=64, dtype="float64", seed=5)


def assert_same_entropy(document: dict, expected) -> None:
    for got, want in zip(document["estimates"], expected.estimates, strict=True):
        assert got["entropy"] == pytest.approx(want.entropy, rel=RELATIVE, abs=0)
        assert got["stderr"] == pytest.approx(want.stderr, rel=1e-8)


def test_an_exported_graph_gives_the_entropy_of_its_module(run_cli, exported):
    module, path = exported
    result = run_cli("estimate", path, *RUN)
    assert result.exit_code == 0, result.stderr
    document = result.json()
    assert document["model"]["format"] == "onnx"
    assert document["model"]["latent_source"]["shape"] == "program" and document["model"]["latent_shape"] == [5]
    assert_same_entropy(document, reference(module))


def test_inspect_and_samples_read_an_onnx_graph(run_cli, exported):
    module, path = exported
    result = run_cli("inspect", path, "--json", "--probe-latents", "3")
    assert result.exit_code == 0, result.stderr
    model = result.json()["model"]
    assert model["format"] == "onnx" and not model["runs_code_from_file"]
    assert model["output_shape"] == [1, 28, 28] and result.json()["checkpoint"] is None
    samples = run_cli("samples", path, "-n", "20", "--lowest", "1", "--highest", "1", "--json", "-q")
    assert samples.exit_code == 0, samples.stderr


def test_convert_maps_the_graph_onto_its_architecture_and_gives_the_same_entropy(run_cli, exported, tmp_path):
    module, path = exported
    plain = tmp_path / "plain.safetensors"
    assert_one_line_error(run_cli("convert", path, plain), "is onnx", "--spec FILE")
    write_spec_file({"architecture": "mlp", "kwargs": {"latent_dim": 5, "output_dim": 784}}, tmp_path / "other.yaml")
    assert_one_line_error(run_cli("convert", path, plain, "--spec", tmp_path / "other.yaml"),
                          "do not carry the names of mlp (missing net.0.weight", "the module it was exported from")
    assert not plain.exists()
    write_spec_file(SPEC, tmp_path / "spec.yaml")
    target = tmp_path / "generator.safetensors"
    result = run_cli("convert", path, target, "--spec", tmp_path / "spec.yaml", "--json")
    assert result.exit_code == 0, result.stderr
    report = result.json()
    assert report["weights_identical"] and report["spec"]["architecture"] == "infogan-mnist"
    assert report["spec"]["latent"] == {"shape": [5], "distribution": "uniform"}
    converted = load_model(target).decoder.state_dict()
    for name, tensor in module.state_dict().items():
        if not name.endswith("num_batches_tracked"):  # ONNX drops batch counters (unused in eval mode)
            assert torch.equal(converted[name], tensor), name
    again = run_cli("estimate", target, *RUN[:-4], "--json", "--quiet")  # its latent is recorded now
    assert again.exit_code == 0, again.stderr
    assert_same_entropy(again.json(), reference(module))
    compared = run_cli("compare", path, target, "-n", "200", "--dtype", "float64", "--latent-distribution", "uniform",
                       "--json", "-q")
    assert compared.exit_code == 0, compared.stderr
    assert abs(compared.json()["pairs"][0]["difference"]) <= 1e-10


def test_an_opset_onnx2torch_cannot_convert_is_refused_with_the_opset_that_works(run_cli, exported, tmp_path):
    module, _ = exported
    path = export(module, tmp_path / "opset19.onnx", opset_version=19)
    result = run_cli("estimate", path)
    assert_one_line_error(result, "uses the ONNX op", "at opset 19", "onnx2torch", "opset_version=")
    suggested = int(result.stderr.split("opset_version=")[1].split(",")[0])
    assert 13 <= suggested < 19
    again = export(module, tmp_path / "suggested.onnx", opset_version=suggested)
    assert run_cli("estimate", again, "-n", "20", "-q").exit_code == 0


def test_a_fixed_batch_size_and_an_op_without_converter_are_refused(run_cli, exported, tmp_path):
    module, _ = exported
    assert_one_line_error(run_cli("inspect", export(module, tmp_path / "fixed.onnx", dynamic=False)),
                          "fixed batch size of 2", "dynamic_axes={'z': {0: 'batch'}}")
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(torch.randn(4, 4).numpy(), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["z", "w"], ["h"]), helper.make_node("Hardmax", ["h"], ["x"])],
                              "g", [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])], [weight])
    path = tmp_path / "hardmax.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    assert_one_line_error(run_cli("estimate", path), "ONNX op Hardmax at opset 13", "no opset of the exporter avoids it",
                          "TorchScript or torch.export")


def test_two_inputs_and_a_corrupt_file_are_refused(run_cli, exported, tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Add", ["z", "y"], ["x"])], "g",
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 4]) for name in "zy"],
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])])
    path = tmp_path / "two.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    assert_one_line_error(run_cli("estimate", path), "takes 2 inputs (z, y)", "a decoder takes one, the latent batch")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(exported[1].read_bytes()[:200])
    assert_one_line_error(run_cli("estimate", corrupt), "is not a loadable ONNX model")


def test_detection_ops_without_torchvision_are_refused_by_name(run_cli, exported, tmp_path):
    from genentropy_cli.models import onnx_models

    if onnx_models._STATE.get("torchvision", True):
        pytest.skip("torchvision is importable here: NonMaxSuppression converts")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("NonMaxSuppression", ["z", "s"], ["x"])], "g",
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4, 4])],
                              [helper.make_tensor_value_info("x", TensorProto.INT64, ["n", 3])],
                              [helper.make_tensor("s", TensorProto.FLOAT, [1, 1, 4], [0.0] * 4)])
    path = tmp_path / "nms.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    assert_one_line_error(run_cli("estimate", path), "NonMaxSuppression", "pip install torchvision")
