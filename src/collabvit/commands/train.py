"""Train a ViT classifier on Fashion-MNIST from a named recipe.

Reads the idx files from Debian's dataset-fashion-mnist (default), from
--data-dir, or downloads them with --download. Writes NAME.safetensors and
NAME.json (loadable by path as a model) to --out, and NAME.ckpt.pt after every
epoch; running the same command again resumes from that checkpoint.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from ._values import count

HELP = "train a ViT on Fashion-MNIST (fmnist-tiny, fmnist-base)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..training import TRAIN_CONFIGS

    parser.add_argument("config", choices=sorted(TRAIN_CONFIGS), help="recipe")
    parser.add_argument("--out", default="runs/train", metavar="DIR")
    parser.add_argument("--data-dir", metavar="DIR", help="folder with the four idx files")
    parser.add_argument("--download", action="store_true", help="fetch with torchvision")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--limit", type=count, metavar="N", help="first N training images")
    parser.add_argument("--seed", type=int, help="override the recipe's seed")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def run(args: argparse.Namespace) -> int:
    from ..cli import progress_bar
    from ..models.devices import resolve_device
    from ..training import TRAIN_CONFIGS, train
    from ._outputs import check_output_dir

    check_output_dir(args.out, "--out")
    cfg = TRAIN_CONFIGS[args.config]
    if args.seed is not None:
        cfg = replace(cfg, seed=args.seed)
    device = str(resolve_device(args.device))  # before any data is read
    bars: dict[int, object] = {}

    def progress(step: int, total: int, stats: dict[str, float]) -> None:
        epoch = int(stats["epoch"])
        if epoch not in bars:
            for old in bars.values():
                old.close()  # type: ignore[attr-defined]
            bars[epoch] = progress_bar(total, f"epoch {epoch}", unit="step")
        bar = bars[epoch]
        bar.update(1)  # type: ignore[attr-defined]
        bar.set_postfix(loss=f"{stats['loss']:.3f}", refresh=False)  # type: ignore[attr-defined]

    config = train(
        cfg, args.out, args.data_dir, args.download, device, args.epochs, args.limit, progress
    )
    for bar in bars.values():
        bar.close()  # type: ignore[attr-defined]
    t = config["training"]
    print(
        f"{cfg.name}: {config['num_parameters']:,} parameters, test accuracy "
        f"{t['test_accuracy']:.2f}% after {len(t['history'])} epochs "
        f"({t['wall_s']:.0f} s) -> {args.out}/{cfg.name}.safetensors"
    )
    return 0
