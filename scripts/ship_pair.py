"""Copy a trained pair into the package and record its documented accuracies.

    python scripts/ship_pair.py runs/train

Reads NAME.safetensors + NAME.json written by `collabvit train`, measures the
top-1 accuracy on the first 1,000 images of the shipped test split (what
tests/test_shipped.py checks, +-0.5 point) and writes both files to
src/collabvit/assets/models/.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from collabvit.fmnist import shipped_test_split
from collabvit.models import load_model
from collabvit.training import evaluate_classifier

DEST = Path(__file__).resolve().parents[1] / "src" / "collabvit" / "assets" / "models"


def main(src: str) -> None:
    DEST.mkdir(parents=True, exist_ok=True)
    images, labels = shipped_test_split()
    for name in ("fmnist-tiny", "fmnist-base"):
        config_path = Path(src) / f"{name}.json"
        model = load_model(str(config_path))
        config = json.loads(config_path.read_text())
        config["documented"] = {
            "first_1000_test_accuracy": round(
                evaluate_classifier(model.model, images[:1000], labels[:1000]), 2
            ),
            "test_accuracy": round(evaluate_classifier(model.model, images, labels), 2),
        }
        shutil.copy(Path(src) / f"{name}.safetensors", DEST / f"{name}.safetensors")
        (DEST / f"{name}.json").write_text(json.dumps(config, indent=2) + "\n")
        print(name, config["documented"])


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/train")
