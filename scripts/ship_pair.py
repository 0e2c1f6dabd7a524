"""Copy a trained pair into the package and record its documented accuracies.

    python scripts/ship_pair.py runs/train                  # fmnist-tiny, fmnist-base
    python scripts/ship_pair.py runs/cfmnist --pair cfmnist  # cfmnist-tiny, cfmnist-base
    python scripts/ship_pair.py runs/cfmnist --pair cfmnist --demo demo.json

Reads NAME.safetensors + NAME.json written by `collabvit train`, measures the
top-1 accuracy on the pair's shipped test set (the t10k split; for cfmnist its
seed-0 cluttered canvases) in full and on its first 1,000 images (what
tests/test_fmnist.py checks, +-0.5 point) and writes both files to
src/collabvit/assets/models/. ``--demo``: the `collabvit demo --json` output
of the shipped pair, whose chosen point and accuracies go into the server's
``documented.demo`` (tests/test_cluttered_seeds.py re-measures them).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from collabvit.fmnist import cluttered_test_split, shipped_test_split
from collabvit.models import load_model
from collabvit.training import evaluate_classifier

DEST = Path(__file__).resolve().parents[1] / "src" / "collabvit" / "assets" / "models"


def _top1(model: Any, images: Any, labels: Any) -> float:
    prep = model.preprocessing
    acc = evaluate_classifier(model.model, images, labels, mean=prep.mean, std=prep.std)
    return round(acc, 2)


DEMO_KEYS = ("edge_accuracy", "server_accuracy", "accuracy", "communication_cost", "point")
DEMO_POINT = ("score", "rule", "threshold", "measure", "eta")


def main(src: str, pair: str, demo: str | None = None) -> None:
    DEST.mkdir(parents=True, exist_ok=True)
    if pair == "cfmnist":
        data = cluttered_test_split(0)
        images, labels = data.images, data.labels
    else:
        images, labels = shipped_test_split()
    for name in (f"{pair}-tiny", f"{pair}-base"):
        config_path = Path(src) / f"{name}.json"
        model = load_model(str(config_path))
        config = json.loads(config_path.read_text())
        config["documented"] = {
            "first_1000_test_accuracy": _top1(model, images[:1000], labels[:1000]),
            "test_accuracy": _top1(model, images, labels),
        }
        if demo and name.endswith("-base"):
            head = json.loads(Path(demo).read_text())
            config["documented"]["demo"] = {k: head[k] for k in DEMO_KEYS + DEMO_POINT}
        shutil.copy(Path(src) / f"{name}.safetensors", DEST / f"{name}.safetensors")
        (DEST / f"{name}.json").write_text(json.dumps(config, indent=2) + "\n")
        print(name, config["documented"])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", nargs="?", default="runs/train")
    parser.add_argument("--pair", choices=("fmnist", "cfmnist"), default="fmnist")
    parser.add_argument("--demo", metavar="JSON", help="collabvit demo --json of this pair")
    args = parser.parse_args()
    main(args.src, args.pair, args.demo)
