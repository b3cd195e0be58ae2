"""Hostile input, round 3 (issue 23, part A): no file read on a model's say-so, no silently wrong
number, bounded counts and checkpoints checked whole. docs/safety.md states the rules.

Every command-line case runs in one subprocess under ``RLIMIT_AS`` (``tests/hostile_batch.py``:
torch is imported once, memory stays bounded for every case, and an audit hook records every
file each case opened). Each case then asserts its exit status, exactly one line on stderr for
a refusal (holding the limit or the rule), no traceback, nothing on stdout for a refusal, that no
secret file (outside the model's folder, or beside the model but named only by its metadata) was
opened and that its content appears nowhere in the output, and, for the cases that run, the right
number. After the batch, no input file has changed.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml
from test_hostile_input import MEMORY_LIMIT, SPEC

from genentropy_cli.core.references import ConditionalLinearDecoder
from genentropy_cli.core.significance import holm_adjust, significance_mark, two_sided_p_value, z_score
from genentropy_cli.defaults import MAX_CLASSES, MAX_DOCUMENT_DEPTH, MAX_LATENT_RANK, MAX_SUBMODELS
from genentropy_cli.models.metadata import METADATA_FILE
from genentropy_cli.models.specs import build_from_spec, save_safetensors
from genentropy_cli.run.checkpoint import document_checksum

ROOT = Path(__file__).resolve().parent.parent
SECRET_OUTSIDE = "SECRET-OUTSIDE-7f3a9c 1 2"
SECRET_BESIDE = "SECRET-BESIDE-e41d07 1 2"
TOKENS = ("SECRET-OUTSIDE-7f3a9c", "SECRET-BESIDE-e41d07", "SECRET-TOKEN-2b8e")
RUN = ["-n", "64", "--dtype", "float64", "--json", "--quiet"]
HUGE = 10**12
SPARSE = 6 * 1024**3
"""The size of the sparse files: a whole read would exhaust the RLIMIT_AS of the batch."""


# --------------------------------------------------------------------------- the files the cases use


def conditional() -> torch.jit.ScriptModule:
    return torch.jit.script(ConditionalLinearDecoder.with_singular_values([[1.0, 0.5, 0.25]] * 3, 4).eval())


def torchscript(path: Path, record: dict | str) -> Path:
    """The conditional decoder with ``record`` as its genentropy.json (a text is written as is)."""
    text = record if isinstance(record, str) else json.dumps(record)
    torch.jit.save(conditional(), str(path), _extra_files={METADATA_FILE: text})
    return path


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def sparse(path: Path, size: int = SPARSE) -> Path:
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


def spec_folder(root: Path, name: str, label: dict, files: dict[str, str | bytes] | None = None) -> Path:
    folder = root / "specs" / name
    folder.mkdir(parents=True)
    (folder / "spec.yaml").write_text(yaml.safe_dump({"label": label}))
    for file, content in (files or {}).items():
        (folder / file).write_bytes(content if isinstance(content, bytes) else content.encode())
    return folder / "spec.yaml"


def rewrite_checkpoint(source: Path, target: Path, change: Callable[[dict, dict], None], forge: bool,
                       saver=np.savez) -> Path:
    """The checkpoint with ``change(document, arrays)`` made; ``forge``: its checksum recomputed,
    as a tamperer who read the code would."""
    with np.load(source) as archive:
        document = json.loads(str(archive["meta"]))
        arrays = {name: archive[name].copy() for name in archive.files if name != "meta"}
    change(document, arrays)
    if forge:
        document["checksum"] = document_checksum(document["settings"], document["state"], arrays)
    with open(target, "wb") as handle:
        saver(handle, meta=np.array(json.dumps(document)), **arrays)
    return target


def declaring(source: Path, target: Path, member: str, shape: tuple, descr: str = "<f8",
              version: tuple = (1, 0)) -> Path:
    """The checkpoint with one member's .npy header replaced: it declares ``shape`` (and keeps
    its few bytes of data)."""
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    import io

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": descr, "fortran_order": False, "shape": shape})
    forged = bytearray(header.getvalue())
    forged[6:8] = bytes(version)
    members[member] = bytes(forged) + b"\0" * 64
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return target


def _hub(world: dict, root: Path) -> None:
    try:
        import huggingface_hub  # noqa: F401
        from test_hub import hub_cache
    except ImportError:
        return
    for name, spec in (("abs", {"label": {"weights": str(world["secret"])}}),
                       ("rel", {"label": {"weights": "secret.txt"}})):
        folder = root / "hubfiles" / name
        folder.mkdir(parents=True)
        torchscript(folder / "model.pt", {"latent_shape": [3], "label": {"num_classes": 3}})
        (folder / "genentropy.yaml").write_text(yaml.safe_dump(spec))
        (folder / "secret.txt").write_text(SECRET_BESIDE)
        hub_cache(root / "hubcache", f"someone/{name}", {path.name: path for path in folder.iterdir()})
    folder = root / "hubfiles" / "config"
    folder.mkdir()
    torchscript(folder / "model.pt", {"latent_shape": [3]})
    sparse(folder / "config.json", 2 * 1024**2)
    hub_cache(root / "hubcache", "someone/config", {path.name: path for path in folder.iterdir()})
    world["hub_env"] = {"HF_HUB_CACHE": str(root / "hubcache"), "HF_HUB_OFFLINE": "1"}


def _onnx(world: dict, root: Path) -> None:
    try:
        import warnings

        import onnx
        from onnx import helper
    except ImportError:
        return
    path = root / "models" / "graph.onnx"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(torch.nn.Linear(3, 4).eval(), (torch.rand(2, 3),), str(path), input_names=["z"],
                              output_names=["x"], dynamic_axes={"z": {0: "batch"}, "x": {0: "batch"}},
                              dynamo=False, opset_version=13)
        graph = onnx.load(str(path))
        record = {"latent_shape": [3], "label": {"num_classes": 2, "weights": str(world["secret"])}}
        helper.set_model_props(graph, {METADATA_FILE: json.dumps(record)})
        onnx.save(graph, str(path))
        world["onnx"] = path
    except Exception:  # the onnx extra half installed: its case is skipped
        return


def _models(world: dict, root: Path) -> None:
    models = root / "models"
    models.mkdir()
    (models / "beside.txt").write_text(SECRET_BESIDE)
    world["beside"] = models / "beside.txt"
    label = {"num_classes": 3}
    for name, record in {
        "linear": {"latent_shape": [3], "label": label},
        "meta_abs": {"latent_shape": [3], "label": {**label, "weights": str(world["secret"])}},
        "meta_rel": {"latent_shape": [3], "label": {**label, "weights": "beside.txt"}},
        "meta_numbers": {"latent_shape": [3], "label": {**label, "weights": "1,3,1"}},
        "meta_classes": {"latent_shape": [3], "label": {"num_classes": HUGE}},
        "meta_rank": {"latent_shape": [1] * 1000, "label": label},
        "meta_list_path": {"latent_shape": [3], "label": {**label, "weights": [str(world["secret"])]}},
        "meta_home": {"latent_shape": [3], "label": {**label, "weights": "~/secret.txt"}},
        "meta_url": {"latent_shape": [3], "label": {**label, "weights": f"file://{world['secret']}"}},
        "meta_onehot_huge": {"latent_shape": [3], "label": {"num_classes": MAX_CLASSES + 1, "format": "onehot"}},
    }.items():
        world[name] = torchscript(models / f"{name}.pt", record)
    deep = json.dumps({"latent_shape": [3]})[:-1] + f', "notes": {nested(MAX_DOCUMENT_DEPTH + 8)}}}'
    world["meta_deep"] = torchscript(models / "meta_deep.pt", deep)
    world["meta_verydeep"] = torchscript(models / "meta_verydeep.pt", nested(200_000))
    module = build_from_spec(SPEC)
    world["embedded"] = save_safetensors(module, models / "embedded.safetensors",
                                         {**SPEC, "label": {"num_classes": 2, "weights": str(world["secret"])}})
    world["embedded_classes"] = save_safetensors(module, models / "embedded_classes.safetensors",
                                                 {**SPEC, "label": {"num_classes": HUGE}})
    world["plain"] = save_safetensors(module, models / "plain.safetensors", SPEC)
    groups = {f"g{index}.w": torch.zeros(1) for index in range(MAX_SUBMODELS + 1)}
    torch.save({"state_dict": groups}, models / "groups.pt")
    world["groups"] = models / "groups.pt"


def _specs(world: dict, root: Path) -> None:
    secret = str(world["secret"])
    world["spec_relative"] = spec_folder(root, "relative", {"weights": "w.txt"}, {"w.txt": "1\n3\n1\n"})
    world["spec_up"] = spec_folder(root, "up", {"weights": "../../secret/secret.txt"})
    world["spec_abs"] = spec_folder(root, "abs", {"weights": secret})
    world["spec_dots"] = spec_folder(root, "dots", {"weights": "sub/../../../secret/secret.txt"})
    world["spec_link"] = spec_folder(root, "link", {"weights": "w.txt"})
    (world["spec_link"].parent / "w.txt").symlink_to(world["secret"])
    world["spec_big"] = spec_folder(root, "big", {"weights": "big.txt"})
    sparse(world["spec_big"].parent / "big.txt")
    world["spec_fifo"] = spec_folder(root, "fifo", {"weights": "pipe"})
    os.mkfifo(world["spec_fifo"].parent / "pipe")
    world["spec_classes"] = spec_folder(root, "classes", {"num_classes": HUGE})
    world["spec_binary"] = spec_folder(root, "binary", {"weights": "blob.bin"},
                                       {"blob.bin": b"\xff\xfe\x00SECRET-TOKEN-2b8e\x00\x81"})
    world["spec_missing"] = spec_folder(root, "missing", {"weights": "nowhere.txt"})
    (root / "specs" / "sidecar").mkdir()
    world["sidecar_model"] = torchscript(root / "specs" / "sidecar" / "model.pt", {"latent_shape": [3]})
    (root / "specs" / "sidecar" / "model.yaml").write_text(yaml.safe_dump(
        {"label": {"num_classes": 3, "weights": "../../secret/secret.txt"}}))


def _working_folder(world: dict, root: Path) -> None:
    cwd = root / "cwd"
    cwd.mkdir()
    world["cwd"] = cwd
    (cwd / "w.txt").write_text("3\n1\n1\n")  # the decoy a spec's relative path must not reach
    (cwd / "ok.txt").write_text("1\n3\n1\n")
    sparse(cwd / "big.txt")
    (cwd / "binary.bin").write_bytes(b"\x89PNG\x00\xffSECRET-TOKEN-2b8e\x00")
    (cwd / "tokens.txt").write_text("1\nSECRET-TOKEN-2b8e\n1\n")
    (cwd / "overflow.txt").write_text("1e999\n1\n1\n")
    (cwd / "huge_int.yaml").write_text(f"[1, {10**400}, 1]\n")
    os.mkfifo(cwd / "pipe")
    (cwd / "folder").mkdir()
    laughs = ['a0: &a0 ["1", "1"]'] + [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 12)]
    (cwd / "laughs.yaml").write_text("\n".join(laughs) + "\n")
    (cwd / "many.txt").write_text("1 " * 2_000_000)
    (cwd / "config.yaml").write_text(yaml.safe_dump({"num-classes": HUGE}))


def _checkpoints(world: dict, root: Path) -> None:
    from typer.testing import CliRunner

    from genentropy_cli.cli.app import app

    folder = root / "ckpt"
    folder.mkdir()
    base = folder / "base.ckpt"
    result = CliRunner().invoke(app, ["estimate", str(world["plain"]), "-n", "2100", "--checkpoint", str(base),
                                      "--quiet", "--json"])
    assert result.exit_code == 0, result.stderr
    world["ckpt_base"] = base
    (root / "control").mkdir()
    world["ckpt_control"] = rewrite_checkpoint(base, root / "control" / "run.ckpt", lambda d, a: None, False)

    def ledger(**values):
        return lambda document, arrays: document["state"]["ledger"].update(values)

    def summary(**values):
        return lambda document, arrays: document["state"]["ledger"]["summary"].update(values)

    edits = {
        "prefix_count": ledger(prefix_count=2000), "merged_blocks": ledger(merged_blocks=2),
        "emitted": ledger(emitted=5), "stop_at": ledger(stop_at=5),
        "nonfinite": lambda d, a: (summary(count=2099, num_nonfinite=1)(d, a), ledger(prefix_count=2099)(d, a)),
        "computed": lambda d, a: d["state"].update(samples_computed=0),
        "elapsed": lambda d, a: d["state"].update(elapsed_seconds=-1.0),
        "offset": lambda d, a: d["state"].update(per_sample_offset=-5),
        "settings_n": lambda d, a: d["settings"].update(num_samples=2000),
        "blocks": ledger(blocks=[10**9]),
        "version_text": lambda d, a: d.update(version="3"),
    }
    for name, change in edits.items():
        world[f"ckpt_edit_{name}"] = rewrite_checkpoint(base, folder / f"edit_{name}.ckpt", change, False)
        world[f"ckpt_forge_{name}"] = rewrite_checkpoint(base, folder / f"forge_{name}.ckpt", change, True)
    world["ckpt_compressed"] = rewrite_checkpoint(base, folder / "compressed.ckpt", lambda d, a: None, True,
                                                  np.savez_compressed)
    world["ckpt_8gib"] = declaring(base, folder / "8gib.ckpt", "prefix_mean.npy", (2**30,))
    world["ckpt_meta_huge"] = declaring(base, folder / "meta_huge.ckpt", "meta.npy", (), descr="<U100000000")
    world["ckpt_negative"] = declaring(base, folder / "negative.ckpt", "prefix_m2.npy", (-1,))
    world["ckpt_npy_v3"] = declaring(base, folder / "npy_v3.ckpt", "prefix_m2.npy", (1,), version=(3, 0))
    world["ckpt_object"] = declaring(base, folder / "object.ckpt", "prefix_m2.npy", (1,), descr="|O")
    world["ckpt_deep"] = rewrite_checkpoint(
        base, folder / "deep.ckpt", lambda d, a: d["state"].update(notes=json.loads(nested(MAX_DOCUMENT_DEPTH + 8))),
        True)
    with np.load(base) as archive:
        arrays = {name: archive[name] for name in archive.files if name != "meta"}
    for name, meta in (("verydeep", nested(200_000)), ("number", "5")):
        path = folder / f"{name}.ckpt"
        with open(path, "wb") as handle:
            np.savez(handle, meta=np.array(meta), **arrays)
        world[f"ckpt_{name}"] = path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("round3")
    (root / "secret").mkdir()
    (root / "secret" / "secret.txt").write_text(SECRET_OUTSIDE)
    world: dict = {"root": root, "secret": root / "secret" / "secret.txt"}
    _models(world, root)
    _specs(world, root)
    _working_folder(world, root)
    _checkpoints(world, root)
    _hub(world, root)
    _onnx(world, root)
    return world


# --------------------------------------------------------------------------- the cases


def probabilities(expected: list[float]):
    def check(document: dict) -> None:
        assert [item["probability"] for item in document["classes"]] == pytest.approx(expected, rel=1e-15)
    return check


ESTIMATE = ["estimate"]
W = "the class weights"
RULE = "never reads a file on a model's say-so"
OUTSIDE = "outside its folder"
RESUME = ["estimate", "{plain}", "-n", "2100", "--json", "--quiet", "--checkpoint"]
START_OVER = "delete it to start over"

CASES: list[tuple[str, list[str], int, tuple[str, ...], Callable | None]] = [
    # (id, arguments ({name} is a world path), exit status, fragments of the one error line, check of the JSON)
    # -- the trust rule: files named by embedded metadata, a repository or a spec
    ("metadata-names-an-absolute-file", [*ESTIMATE, "{meta_abs}", *RUN], 2, (W, RULE, "--class-weights FILE"), None),
    ("metadata-names-a-file-beside-the-model", [*ESTIMATE, "{meta_rel}", *RUN], 2, (RULE,), None),
    ("safetensors-metadata-names-a-file", [*ESTIMATE, "{embedded}", *RUN], 2, (RULE, "metadata of"), None),
    ("onnx-metadata-names-a-file", [*ESTIMATE, "{onnx}", *RUN], 2, (RULE,), None),
    ("hub-repository-names-an-absolute-file", [*ESTIMATE, "hf://someone/abs", *RUN], 2, (RULE, "hf://someone/abs"),
     None),
    ("hub-repository-names-a-file-in-it", [*ESTIMATE, "hf://someone/rel", *RUN], 2, (RULE,), None),
    ("spec-names-a-file-above-its-folder", [*ESTIMATE, "{linear}", "--spec", "{spec_up}", *RUN], 2, (OUTSIDE,), None),
    ("spec-names-an-absolute-file", [*ESTIMATE, "{linear}", "--spec", "{spec_abs}", *RUN], 2, (OUTSIDE,), None),
    ("spec-link-points-outside", [*ESTIMATE, "{linear}", "--spec", "{spec_link}", *RUN], 2, (OUTSIDE,), None),
    ("sidecar-names-a-file-outside", [*ESTIMATE, "{sidecar_model}", *RUN], 2, (OUTSIDE,), None),
    ("spec-relative-path-resolves-beside-the-spec", [*ESTIMATE, "{linear}", "--spec", "{spec_relative}", *RUN], 0, (),
     probabilities([0.2, 0.6, 0.2])),
    ("spec-names-a-6gib-file", [*ESTIMATE, "{linear}", "--spec", "{spec_big}", *RUN], 2, ("6 GiB", "4 MiB"), None),
    ("spec-names-a-fifo", [*ESTIMATE, "{linear}", "--spec", "{spec_fifo}", *RUN], 2, ("not a regular file",), None),
    ("spec-names-a-binary-file", [*ESTIMATE, "{linear}", "--spec", "{spec_binary}", *RUN], 2, ("is not text",), None),
    ("spec-names-a-missing-file", [*ESTIMATE, "{linear}", "--spec", "{spec_missing}", *RUN], 2, ("not found",), None),
    ("metadata-numbers-are-allowed", [*ESTIMATE, "{meta_numbers}", *RUN], 0, (), probabilities([0.2, 0.6, 0.2])),
    ("flag-file-relative-to-the-working-folder", [*ESTIMATE, "{linear}", "--class-weights", "ok.txt", *RUN], 0, (),
     probabilities([0.2, 0.6, 0.2])),
    ("flag-names-a-6gib-file", [*ESTIMATE, "{linear}", "--class-weights", "big.txt", *RUN], 2, ("6 GiB", "4 MiB"),
     None),
    ("flag-names-a-binary-file", [*ESTIMATE, "{linear}", "--class-weights", "binary.bin", *RUN], 2, ("is not text",),
     None),
    ("flag-file-with-a-word-is-not-echoed", [*ESTIMATE, "{linear}", "--class-weights", "tokens.txt", *RUN], 2,
     ("other than a number at item 1",), None),
    ("flag-file-overflowing-number", [*ESTIMATE, "{linear}", "--class-weights", "overflow.txt", *RUN], 2,
     ("weight 0 (counting from 0)",), None),
    ("flag-names-a-fifo", [*ESTIMATE, "{linear}", "--class-weights", "pipe", *RUN], 2, ("not a regular file",), None),
    ("flag-names-a-folder", [*ESTIMATE, "{linear}", "--class-weights", "folder", *RUN], 2, ("is a directory",), None),
    ("flag-names-nothing", [*ESTIMATE, "{linear}", "--class-weights", "absent.txt", *RUN], 2,
     ("neither a list of numbers nor a file",), None),
    # -- counts a file or a flag sets
    ("num-classes-flag-10^12", [*ESTIMATE, "{linear}", "--num-classes", str(HUGE), *RUN], 2,
     (f"limit of {MAX_CLASSES:,}",), None),
    ("num-classes-metadata-10^12", [*ESTIMATE, "{meta_classes}", *RUN], 2, (f"limit of {MAX_CLASSES:,}",), None),
    ("num-classes-safetensors-spec-10^12", [*ESTIMATE, "{embedded_classes}", *RUN], 2, (f"limit of {MAX_CLASSES:,}",),
     None),
    ("num-classes-spec-file-10^12", [*ESTIMATE, "{linear}", "--spec", "{spec_classes}", *RUN], 2,
     (f"limit of {MAX_CLASSES:,}",), None),
    ("latent-shape-of-1000-axes", [*ESTIMATE, "{meta_rank}", *RUN], 2, (f"limit of {MAX_LATENT_RANK}",), None),
    ("sub-models-past-the-limit", ["inspect", "{groups}", "--json"], 2, (f"limit of {MAX_SUBMODELS:,}",), None),
    # -- checkpoints: every counter in the checksum, sizes before allocation, depth, invariants
    ("checkpoint-edited-prefix-count", [*RESUME, "{ckpt_edit_prefix_count}"], 2, ("checksum", START_OVER), None),
    ("checkpoint-edited-merged-blocks", [*RESUME, "{ckpt_edit_merged_blocks}"], 2, ("checksum",), None),
    ("checkpoint-edited-frontier", [*RESUME, "{ckpt_edit_emitted}"], 2, ("checksum",), None),
    ("checkpoint-edited-samples-computed", [*RESUME, "{ckpt_edit_computed}"], 2, ("checksum",), None),
    ("checkpoint-edited-settings", [*RESUME, "{ckpt_edit_settings_n}"], 2, ("checksum",), None),
    ("checkpoint-forged-prefix-count", [*RESUME, "{ckpt_forge_prefix_count}"], 2, ("counters disagree", START_OVER),
     None),
    ("checkpoint-forged-frontier", [*RESUME, "{ckpt_forge_emitted}"], 2, ("frontier",), None),
    ("checkpoint-forged-samples-computed", [*RESUME, "{ckpt_forge_computed}"], 2, ("run counters",), None),
    ("checkpoint-forged-nonfinite-count", [*RESUME, "{ckpt_forge_nonfinite}"], 2, ("--skip-nonfinite",), None),
    ("checkpoint-declares-8gib", [*RESUME, "{ckpt_8gib}"], 2, ("declares 8,589,934,592 bytes", START_OVER), None),
    ("checkpoint-compressed", [*RESUME, "{ckpt_compressed}"], 2, ("compressed",), None),
    ("checkpoint-nested-200000-deep", [*RESUME, "{ckpt_verydeep}"], 2, (f"more than {MAX_DOCUMENT_DEPTH} levels",),
     None),
    ("checkpoint-nested-past-the-limit", [*RESUME, "{ckpt_deep}"], 2, (f"more than {MAX_DOCUMENT_DEPTH} levels",),
     None),
    ("checkpoint-untouched-resumes", [*RESUME, "{ckpt_control}"], 0, (),
     lambda document: document["diagnostics"]["samples_computed"] == 0 or pytest.fail(str(document["diagnostics"]))),
]

ADVERSARIAL: list[tuple[str, list[str], int, tuple[str, ...], Callable | None]] = [
    ("metadata-names-a-file-in-a-list", [*ESTIMATE, "{meta_list_path}", *RUN], 2,
     ("the class weights in the metadata of", "not a list of numbers"), None),
    ("metadata-names-a-home-path", [*ESTIMATE, "{meta_home}", *RUN], 2, (RULE,), None),
    ("metadata-names-a-file-url", [*ESTIMATE, "{meta_url}", *RUN], 2, (RULE,), None),
    ("spec-path-climbs-through-a-subfolder", [*ESTIMATE, "{linear}", "--spec", "{spec_dots}", *RUN], 2, (OUTSIDE,),
     None),
    ("flag-file-of-yaml-aliases", [*ESTIMATE, "{linear}", "--class-weights", "laughs.yaml", *RUN], 2,
     ("other than a number",), None),
    ("flag-file-of-two-million-weights", [*ESTIMATE, "{linear}", "--class-weights", "many.txt", *RUN], 2,
     ("2000000 weights for 3 classes",), None),
    ("flag-file-integer-past-float", [*ESTIMATE, "{linear}", "--class-weights", "huge_int.yaml", *RUN], 2,
     ("other than a number at item 1",), None),
    ("config-num-classes-10^12", [*ESTIMATE, "{linear}", "--config", "config.yaml", *RUN], 2,
     (f"limit of {MAX_CLASSES:,}",), None),
    ("onehot-classes-one-past-the-limit", [*ESTIMATE, "{meta_onehot_huge}", *RUN], 2, (f"limit of {MAX_CLASSES:,}",),
     None),
    ("genentropy-json-nested-past-the-limit", [*ESTIMATE, "{meta_deep}", *RUN], 2,
     (f"more than {MAX_DOCUMENT_DEPTH} levels",), None),
    ("genentropy-json-nested-200000-deep", [*ESTIMATE, "{meta_verydeep}", *RUN], 2, ("unreadable genentropy.json",),
     None),
    ("hub-config-json-of-2mib", [*ESTIMATE, "hf://someone/config", *RUN], 2, ("2 MiB", "1 MiB"), None),
    ("checkpoint-text-member-declares-400mb", [*RESUME, "{ckpt_meta_huge}"], 2, ("declares",), None),
    ("checkpoint-negative-shape", [*RESUME, "{ckpt_negative}"], 2, ("not a readable genentropy checkpoint",), None),
    ("checkpoint-npy-version-3", [*RESUME, "{ckpt_npy_v3}"], 2, ("unknown .npy version",), None),
    ("checkpoint-object-array", [*RESUME, "{ckpt_object}"], 2, ("not numbers",), None),
    ("checkpoint-forged-stop-at", [*RESUME, "{ckpt_forge_stop_at}"], 2, ("no run can have left",), None),
    ("checkpoint-forged-negative-time", [*RESUME, "{ckpt_forge_elapsed}"], 2, ("run counters",), None),
    ("checkpoint-forged-negative-offset", [*RESUME, "{ckpt_forge_offset}"], 2, ("run counters",), None),
    ("checkpoint-forged-block-10^9", [*RESUME, "{ckpt_forge_blocks}"], 2, ("stored blocks do not fit",), None),
    ("checkpoint-version-as-text", [*RESUME, "{ckpt_forge_version_text}"], 2, ("version '3' checkpoint",), None),
    ("checkpoint-meta-is-a-number", [*RESUME, "{ckpt_number}"], 2, ("not a genentropy checkpoint",), None),
]


def _needs(case_arguments: list[str], world: dict) -> str | None:
    """The world entry a case needs that this machine could not make (the onnx or hub extra)."""
    for argument in case_arguments:
        if argument.startswith("hf://") and "hub_env" not in world:
            return "the hub extra"
        if argument == "{onnx}" and "onnx" not in world:
            return "the onnx extra"
    return None


def _arguments(arguments: list[str], world: dict) -> list[str]:
    return [argument.format(**{key: str(value) for key, value in world.items() if isinstance(value, Path)})
            for argument in arguments]


@pytest.fixture(scope="module")
def outcomes(world, tmp_path_factory) -> dict:
    """Every case run in one subprocess under RLIMIT_AS (tests/hostile_batch.py)."""
    cases = []
    for identifier, arguments, *_ in CASES + ADVERSARIAL:
        if _needs(arguments, world) is None:
            env = world.get("hub_env", {}) if any(argument.startswith("hf://") for argument in arguments) else {}
            cases.append({"id": identifier, "args": _arguments(arguments, world), "cwd": str(world["cwd"]),
                          "env": {"COLUMNS": "120", "NO_COLOR": "1", **env}, "watch": str(world["root"]),
                          "skip": "control"})  # the control checkpoint is resumed and rewritten
    batch = tmp_path_factory.mktemp("batch")
    (batch / "cases.json").write_text(json.dumps(cases))

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    completed = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "hostile_batch.py"), str(batch / "cases.json"),
         str(batch / "results.json")], capture_output=True, text=True, preexec_fn=limits, timeout=900,
        env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=world["cwd"])
    assert completed.returncode == 0, completed.stderr[-3000:]
    return {"results": json.loads((batch / "results.json").read_text())}


def _check(case, world: dict, outcomes: dict) -> None:
    identifier, arguments, status, fragments, check = case
    missing = _needs(arguments, world)
    if missing:
        pytest.skip(f"needs {missing}")
    result = outcomes["results"][identifier]
    output = result["stdout"] + result["stderr"]
    assert result["exception"] is None, result["exception"]
    assert "Traceback" not in output
    assert result["exit"] == status, (result["exit"], result["stderr"][-2000:])
    lines = [line for line in result["stderr"].splitlines() if line.strip()]
    if status == 2:
        assert len(lines) == 1 and lines[0].startswith("error: "), result["stderr"]
        assert result["stdout"] == ""
        for fragment in fragments:
            assert fragment in lines[0], lines[0]
    else:
        assert not any(line.startswith("error") for line in lines), result["stderr"]
        if check is not None:
            check(json.loads(result["stdout"]))
    for token in TOKENS:  # no content of a file is echoed, a secret's least of all
        assert token not in output, output
    for secret in (world["secret"], world["beside"]):  # never opened: named by no one the rule trusts
        assert os.path.realpath(secret) not in result["opened"], identifier
    assert result["changed"] == [], f"{identifier} changed input files"


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_round_three(case, world, outcomes):
    _check(case, world, outcomes)


@pytest.mark.parametrize("case", ADVERSARIAL, ids=[case[0] for case in ADVERSARIAL])
def test_own_adversarial_round(case, world, outcomes):
    _check(case, world, outcomes)


# --------------------------------------------------------------------------- statistics from a NaN


@pytest.mark.parametrize("difference, stderr", [(1.0, math.nan), (math.nan, 0.5), (0.0, math.nan),
                                                (math.inf, math.nan), (-2.0, math.nan)])
def test_no_significance_is_claimed_from_a_nan(difference, stderr):
    z = z_score(difference, stderr)
    assert math.isnan(z) and math.isnan(two_sided_p_value(z)) and significance_mark(two_sided_p_value(z)) == ""
    assert math.isnan(holm_adjust([two_sided_p_value(z), 0.01])[0])


def test_a_zero_error_still_gives_an_infinite_z_and_p_zero():
    """The NaN rule changes nothing else: a nonzero difference with zero error is certain."""
    assert z_score(1.0, 0.0) == math.inf and two_sided_p_value(z_score(1.0, 0.0)) == 0.0
    assert z_score(1.0, 0.5) == 2.0 and two_sided_p_value(2.0) == pytest.approx(math.erfc(2 / math.sqrt(2)))


class _Doubled(torch.nn.Module):
    """x = scale [z; z], NaN wherever z_1 < ``below`` (one row's output depends on its latent only)."""

    def __init__(self, scale: float, below: float = -math.inf):
        super().__init__()
        self.scale, self.below = scale, below

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        outputs = torch.cat([latents, latents], 1) * self.scale
        return torch.where(latents[:, :1] >= self.below, outputs, torch.full_like(outputs, math.nan))


def test_the_metric_reports_no_p_for_a_change_whose_error_is_nan():
    """EntropyMetric: the second call keeps one of four samples (the others non-finite, skipped),
    so the paired change (log 4: J^T J goes from 2I to 8I, 1/2 log det from log 2 to log 8) has
    one common sample and a NaN error: p is NaN (null in JSON) and no mark, never p = 0 and '***'."""
    from genentropy_cli.core.latents import LatentStream, make_latent_spec
    from genentropy_cli.envelope import to_json
    from genentropy_cli.jobs.metric import EntropyMetric

    largest = float(LatentStream(make_latent_spec(2), 0).range(0, 4)[:, 0].max())
    metric = EntropyMetric(2, n_samples=4, skip_nonfinite=True, device="cpu", dtype="float64")
    metric(_Doubled(1.0))
    change = metric(_Doubled(2.0, below=largest)).changes[0]
    assert change.num_samples == 1  # 1/2 log det (8 + s^2) I_2 - 1/2 log det (2 + s^2) I_2, s = 1e-4
    assert change.difference == pytest.approx(math.log(8 + 1e-8) - math.log(2 + 1e-8), rel=1e-12)
    assert math.isnan(change.stderr) and math.isnan(change.p_value) and change.to_dict()["mark"] == ""
    assert json.loads(to_json(change.to_dict()))["p_value"] is None
