"""Plot Table 3 (entropy vs k for VAEs trained on the digits <= k) from a `compare --json` file.

    genentropy compare sample_models/vae-le-{0..9}.safetensors -n 2000 -o docs/data/class-exclusion.json
    genentropy compare sample_models/vae-le-{0,0-long,1,1-long,9}.safetensors -n 2000 -o docs/data/equal-steps.json
    python scripts/plot_class_exclusion.py docs/data/class-exclusion.json docs/figures/class-exclusion.png \
        --equal-steps docs/data/equal-steps.json

Left: H(k) with 95% intervals, beside the paper's Table 3 (with ``--equal-steps``, also the
series trained for equal numbers of gradient steps). Right: H(k) - H(9) with 95%
intervals from the paired standard errors (all ten VAEs share their N(0, I) latents), beside
the paper's differences, so the shapes of the two series can be compared whatever their levels.
Needs matplotlib (the ``plot`` extra).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

PAPER_TABLE_3 = (-177.7, -191.0, -146.7, -130.9, -129.9, -107.3, -104.4, -110.5, -104.7, -105.7)
"""Struminsky et al., Table 3, MNIST, s = 1e-4 (nats)."""

Z95 = 1.959963984540054


def class_of(name: str) -> int | None:
    """k of a model named vae-le-K (None for other names, e.g. vae-le-0-long)."""
    match = re.fullmatch(r"vae-le-(\d+)", name)
    return int(match.group(1)) if match else None


def series(document: dict) -> tuple[list[int], list[float], list[float], list[float], list[float]]:
    """k, H(k), its standard error, H(k) - H(9) and that difference's standard error."""
    models = {model["name"]: model["estimates"][0] for model in document["models"] if class_of(model["name"]) is not None}
    names = sorted(models, key=class_of)
    ks = [class_of(name) for name in names]
    last = names[-1]
    entropies = [models[name]["entropy"] for name in names]
    stderrs = [models[name]["stderr"] for name in names]
    deltas, delta_errors = [], []
    for name in names:
        if name == last:
            deltas.append(0.0)
            delta_errors.append(0.0)
            continue
        pair = next(item for item in document["pairs"] if {item["first"], item["second"]} == {name, last})
        sign = 1.0 if pair["first"] == name else -1.0
        deltas.append(sign * pair["difference"])
        delta_errors.append(pair["stderr"])
    return ks, entropies, stderrs, deltas, delta_errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("compare_json", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--equal-steps", type=Path, default=None,
                        help="a compare JSON with vae-le-K-long models (and vae-le-9): add them to the plot")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    document = json.loads(args.compare_json.read_text())
    ks, entropies, stderrs, deltas, delta_errors = series(document)
    paper = [PAPER_TABLE_3[k] for k in ks]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.errorbar(ks, entropies, yerr=[Z95 * e for e in stderrs], marker="o", capsize=3,
                  label="ours, equal epochs (95% CI)")
    left.plot(ks, paper, marker="s", linestyle="--", label="paper, Table 3")
    left.set(xlabel="k (trained on digits 0..k)", ylabel="entropy H (nats), s = 1e-4", title="Entropy vs k")
    right.errorbar(ks, deltas, yerr=[Z95 * e for e in delta_errors], marker="o", capsize=3,
                   label="ours, equal epochs, paired 95% CI")
    right.plot(ks, [value - paper[-1] for value in paper], marker="s", linestyle="--", label="paper")
    if args.equal_steps is not None:
        extra = json.loads(args.equal_steps.read_text())
        by_name = {model["name"]: model["estimates"][0] for model in extra["models"]}
        reference = f"vae-le-{ks[-1]}"
        longs = sorted((int(name.split("-")[2]), name) for name in by_name if name.endswith("-long"))
        longs.append((ks[-1], reference))  # the last model needs no twin: it already has that many steps
        label = "ours, equal steps"
        left.errorbar([k for k, _ in longs], [by_name[name]["entropy"] for _, name in longs],
                      yerr=[Z95 * by_name[name]["stderr"] for _, name in longs], marker="^", capsize=3,
                      color="C2", label=label)
        deltas_long = []
        for _, name in longs[:-1]:
            pair = next(item for item in extra["pairs"] if {item["first"], item["second"]} == {name, reference})
            deltas_long.append(((1.0 if pair["first"] == name else -1.0) * pair["difference"], pair["stderr"]))
        deltas_long.append((0.0, 0.0))
        right.errorbar([k for k, _ in longs], [value for value, _ in deltas_long],
                       yerr=[Z95 * error for _, error in deltas_long], marker="^", capsize=3, color="C2",
                       label=label + ", paired 95% CI")
    right.axhline(0.0, color="grey", linewidth=0.8)
    right.set(xlabel="k", ylabel=f"H(k) - H({ks[-1]}) (nats)", title="Relative to the full-data model")
    for axis in (left, right):
        axis.set_xticks(ks)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    settings = document["settings"]
    figure.suptitle(f"Class exclusion (VAEs on digits <= k), N = {settings['num_used']} shared latents, "
                    f"seed {settings['seed']}", fontsize=10)
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
