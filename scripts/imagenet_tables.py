"""Write the two ImageNet-1k tables that collabvit ships (src/collabvit/assets/imagenet/).

    python scripts/imagenet_tables.py --devkit-map map_clsloc.txt
    python scripts/imagenet_tables.py --devkit-meta ILSVRC2012_devkit_t12/data/meta.mat

- ``synsets.txt``: the 1,000 synsets in the model's class-index order (line i is
  class i), from ``timm.data.ImageNetInfo`` (sorted WNIDs, the order of every
  timm and torchvision ImageNet-1k head).
- ``devkit_synsets.txt``: line k is the synset of devkit id k (the ids of
  ``ILSVRC2012_validation_ground_truth.txt``). The ids follow the WNID order of
  the ILSVRC2012 devkit's ``meta.mat`` (``ILSVRC2012_ID`` of its 1,000 leaf
  synsets); the later devkits list the same ids in ``data/map_clsloc.txt``
  (``n02119789 1 kit_fox``). Give either file; ``meta.mat`` needs scipy.

Both tables are checked before writing: 1,000 distinct synsets each, the same set.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEST = Path(__file__).resolve().parents[1] / "src" / "collabvit" / "assets" / "imagenet"


def model_order() -> list[str]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [str(info.index_to_label_name(i)) for i in range(info.num_classes())]


def devkit_from_map(path: Path) -> list[str]:
    """``WNID ID NAME`` lines (ids 1..1000) -> synsets in id order."""
    by_id = {}
    for line in path.read_text().splitlines():
        if line.strip():
            wnid, devkit_id = line.split()[:2]
            by_id[int(devkit_id)] = wnid
    return [by_id[k] for k in sorted(by_id)]


def devkit_from_meta(path: Path) -> list[str]:
    """The leaf synsets of ``meta.mat`` (``num_children == 0``) in ``ILSVRC2012_ID`` order."""
    from scipy.io import loadmat

    synsets = loadmat(str(path), squeeze_me=True)["synsets"]
    leaves = [s for s in synsets if int(s["num_children"]) == 0]
    return [str(s["WNID"]) for s in sorted(leaves, key=lambda s: int(s["ILSVRC2012_ID"]))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--devkit-map", type=Path, metavar="map_clsloc.txt")
    source.add_argument("--devkit-meta", type=Path, metavar="meta.mat")
    args = parser.parse_args(argv)
    order = model_order()
    if args.devkit_map is not None:
        devkit = devkit_from_map(args.devkit_map)
    else:
        devkit = devkit_from_meta(args.devkit_meta)
    if len(order) != 1000 or len(set(order)) != 1000:
        sys.exit(f"timm's ImageNet info has {len(set(order))} distinct synsets, not 1,000")
    if len(devkit) != 1000 or set(devkit) != set(order):
        sys.exit("the devkit table is not a permutation of the 1,000 ImageNet-1k synsets")
    DEST.mkdir(parents=True, exist_ok=True)
    (DEST / "synsets.txt").write_text("\n".join(order) + "\n")
    (DEST / "devkit_synsets.txt").write_text("\n".join(devkit) + "\n")
    print(f"wrote {DEST / 'synsets.txt'} and {DEST / 'devkit_synsets.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
