"""Draw per-image panels in the style of the paper's Figs. 3-6.

For each IMAGE: the preprocessed input, the edge model's patch-importance
heat-map, the patches the selection rule keeps (the rest greyed out), the
edge's prediction and gate decision, and, with --server, the server's
prediction on the kept patches and on the full image. --compare-server adds
the server's own attention map and the same number of patches chosen by it
(Figs. 5-6). Class names come from the model (ImageNet names for timm models)
or --classes. An IMAGE that is not a file may name a shipped test image as
the sweep names it: ``t10k/00042`` or ``cfmnist-0/00042`` (a cluttered canvas;
the garment's box is drawn on every panel). Writes OUT/<image name>.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from PIL import Image

from ..cli import add_model_options, add_point_options, load_role, point_from_args
from ._outputs import check_output_dir

HELP = "per-image panels: attention heat-map, selected patches, predictions"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="image files, or shipped test images: t10k/00042, cfmnist-0/00042",
    )
    add_model_options(parser, roles=("edge",))
    group = parser.add_argument_group("server")
    group.add_argument("--server", metavar="NAME", help="server model (optional)")
    group.add_argument("--server-checkpoint", metavar="PATH", help="server weights")
    add_point_options(parser)
    group = parser.add_argument_group("output")
    group.add_argument("--out", required=True, metavar="DIR", help="output folder")
    group.add_argument(
        "--classes",
        metavar="FILE",
        help="class names: one per line, or a TSV with index and name columns",
    )
    group.add_argument(
        "--labels", metavar="CSV", help="file,label CSV: show the true class of known images"
    )
    group.add_argument(
        "--compare-server",
        action="store_true",
        help="also show the server's attention map and selection (needs --server)",
    )


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..visualize import output_names, read_class_names, read_labels, visualize_image

    if args.compare_server and not args.server:
        raise ConfigError("--compare-server needs --server")
    check_output_dir(args.out, "--out")
    builtin = {name: _builtin(name) for name in args.images if not Path(name).exists()}
    point = point_from_args(args)
    names = read_class_names(args.classes) if args.classes else None
    labels = read_labels(args.labels) if args.labels else {}
    edge = load_role(args, "edge")
    server = load_role(args, "server") if args.server else None
    out = Path(args.out)
    stems = [i.replace("/", "-") if i in builtin else i for i in args.images]
    for i, (image, name) in enumerate(zip(args.images, output_names(stems), strict=True)):
        pixels, label, box = builtin.get(image) or (None, None, None)
        path = visualize_image(
            image,
            edge,
            server,
            out / name,
            point,
            class_names=names,
            label=labels.get(Path(image).name, label),
            compare_server=args.compare_server,
            image_id=i,
            image=None if pixels is None else Image.fromarray(pixels),
            box=box,
        )
        print(path)
    return 0


def _builtin(name: str) -> tuple[Any, int, Any]:
    """A shipped test image named as the sweep names it; anything else is a missing file."""
    from ..errors import DataError
    from ..fmnist import builtin_image

    found = builtin_image(name)
    if found is None:
        raise DataError(
            f"{name}: no such image file (shipped test images are named t10k/00042 or "
            "cfmnist-SEED/00042)"
        )
    return found
