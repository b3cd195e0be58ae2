"""``EntropyTorchMetric``: the entropy as a torchmetrics ``Metric`` (equal to ``EntropyMetric``;
in a ``MetricCollection``; ``.to()``; ``plot()``; DDP sync equal to one process)."""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from training_support import LATENT_DIM, make_generator

from genentropy_cli import EntropyMetric, estimate_entropy

torchmetrics = pytest.importorskip("torchmetrics")
from genentropy_cli import EntropyTorchMetric  # noqa: E402  (needs torchmetrics)

SCALES = (1e-1, 1e-3)
RUN = {"dtype": "float64", "seed": 7, "device": "cpu", "probe_samples": 0}
N = 150


def generator() -> torch.nn.Module:
    torch.manual_seed(0)
    return make_generator()


def test_one_update_equals_entropy_metric():
    decoder = generator()
    metric = EntropyTorchMetric(LATENT_DIM, SCALES, N, **RUN)
    metric.update(decoder)
    values = metric.compute()
    reference = EntropyMetric(LATENT_DIM, SCALES, N, **RUN)(decoder)
    for estimate in reference.estimates:
        assert abs(float(values[f"entropy/s={estimate.scale:g}"]) - estimate.entropy) <= 1e-12
        assert abs(float(values[f"entropy_stderr/s={estimate.scale:g}"]) - estimate.stderr) <= 1e-12


def pooled_terms(decoder: torch.nn.Module, seeds: tuple[int, ...]) -> np.ndarray:
    """Every sample's h_i of the runs of these seeds, from the loop's rows (independent of the metric)."""
    rows: list[np.ndarray] = []
    for seed in seeds:
        estimate_entropy(decoder, LATENT_DIM, SCALES, N, **{**RUN, "seed": seed},
                         on_rows=lambda first, batch: rows.append(np.array(batch.terms)))
    return np.concatenate(rows)


def test_updates_accumulate_the_next_latents_and_reset_starts_again():
    decoder = generator()
    metric = EntropyTorchMetric(LATENT_DIM, SCALES, N, **RUN)
    metric.update(decoder)
    metric.update(decoder)
    values = metric.compute()
    terms = pooled_terms(decoder, (7, 8))  # update u uses seed + u
    assert terms.shape == (2 * N, len(SCALES))
    for index, scale in enumerate(SCALES):
        assert float(values[f"entropy/s={scale:g}"]) == pytest.approx(terms[:, index].mean(), rel=1e-12, abs=1e-12)
        stderr = terms[:, index].std(ddof=1) / math.sqrt(len(terms))
        assert float(values[f"entropy_stderr/s={scale:g}"]) == pytest.approx(stderr, rel=1e-10)
    metric.reset()
    metric.update(decoder)
    again = EntropyMetric(LATENT_DIM, SCALES, N, **RUN)(decoder).estimates[0].entropy
    assert float(metric.compute()[f"entropy/s={SCALES[0]:g}"]) == pytest.approx(again, rel=1e-12)


def test_in_a_metric_collection_moved_with_to_and_plotted(tmp_path):
    pytest.importorskip("matplotlib")
    decoder = generator()
    collection = torchmetrics.MetricCollection({"entropy": EntropyTorchMetric(LATENT_DIM, SCALES[:1], N, **RUN)})
    collection.to("cpu", dtype=torch.float64)
    collection.update(decoder)
    values = collection.compute()
    reference = EntropyMetric(LATENT_DIM, SCALES[:1], N, **RUN)(decoder).estimates[0]
    assert float(values[f"entropy/s={SCALES[0]:g}"]) == pytest.approx(reference.entropy, rel=1e-12)
    figure, _ = collection["entropy"].plot()
    figure.savefig(tmp_path / "metric.png")
    assert (tmp_path / "metric.png").stat().st_size > 0
    assert decoder.training  # the generator's mode is left as it was


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rank(rank: int, world_size: int, port: int, folder: str) -> None:
    """One rank of a gloo group: one update each (rank r takes the latents of seed + r), then the
    synced compute."""
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                         world_size=world_size)
    metric = EntropyTorchMetric(LATENT_DIM, SCALES, N, **RUN)
    metric.update(generator())
    values = {name: float(value) for name, value in metric.compute().items()}
    Path(folder, f"rank{rank}.json").write_text(json.dumps(values))
    torch.distributed.destroy_process_group()


def test_two_gloo_processes_equal_one_process_on_the_union_of_their_latents(tmp_path):
    import torch.multiprocessing as multiprocessing

    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    for attempt in range(4):  # a port taken between choosing and binding it: choose another
        try:
            multiprocessing.spawn(_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
            break
        except Exception as error:
            if "Address already in use" not in str(error) or attempt == 3:
                raise
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    single = EntropyTorchMetric(LATENT_DIM, SCALES, N, **RUN)
    decoder = generator()
    single.update(decoder)
    single.update(decoder)
    expected = {name: float(value) for name, value in single.compute().items()}
    for values in ranks:
        assert values.keys() == expected.keys()
        for name, value in expected.items():
            assert values[name] == pytest.approx(value, rel=1e-12, abs=1e-12), name
