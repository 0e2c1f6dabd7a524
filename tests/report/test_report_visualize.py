"""collabvit.visualize and collabvit.report.panels: Fig. 3-6 panels for real photos, class-name
files, the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from collabvit.cli import main
from collabvit.engine import OperatingPoint
from collabvit.errors import ConfigError
from collabvit.models import load_model
from collabvit.report import panels
from collabvit.visualize import (
    PanelText,
    output_names,
    read_class_names,
    read_labels,
    render_panel,
    visualize_image,
)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(one_thread: None) -> None:
    """Tiny models on a shared 2-core machine: one intra-op thread avoids oversubscription."""


def test_visualize_draws_with_the_report_panel() -> None:
    assert render_panel is panels.render_panel and PanelText is panels.PanelText


def _first_photo(imagenet_dir: Path) -> tuple[Path, int]:
    line = (imagenet_dir / "labels.csv").read_text().splitlines()[1]
    name, label = line.split(",")[:2]
    return imagenet_dir / "images" / name, int(label)


def test_class_names_from_tsv_and_text(imagenet_dir: Path, tmp_path: Path) -> None:
    names = read_class_names(imagenet_dir / "classes.tsv")
    assert len(names) == 1000 and names[0] == "tench" and names[1] == "goldfish"
    plain = tmp_path / "names.txt"
    plain.write_text("T-shirt/top\nTrouser\n\nPullover\n")
    assert read_class_names(plain) == ["T-shirt/top", "Trouser", "Pullover"]
    with pytest.raises(ConfigError, match="cannot read"):
        read_class_names(tmp_path / "missing.txt")
    labels = read_labels(imagenet_dir / "labels.csv")
    assert len(labels) == 1300


def test_render_panel_from_arrays(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(3, 64, 64), dtype=np.uint8)
    scores = rng.random(64)
    scores /= scores.sum()
    keep = scores >= np.quantile(scores, 0.5)
    text = PanelText("synthetic", "edge: class 3 (12.0%)", "server: class 3 (40.0%)")
    out = render_panel(pixels, scores, keep, 8, text, tmp_path / "p.png")
    with Image.open(out) as im:
        assert im.width > 3 * im.height / 2
    wide = render_panel(pixels, scores, keep, 8, text, tmp_path / "w.png", scores, keep)
    with Image.open(wide) as im_wide, Image.open(out) as im:
        assert im_wide.width > im.width  # two more panels
    with pytest.raises(ConfigError, match="patch values"):
        render_panel(pixels, scores[:10], keep, 8, text, tmp_path / "bad.png")
    with pytest.raises(ConfigError, match="uint8"):
        render_panel(pixels.astype(np.float32), scores, keep, 8, text, tmp_path / "bad.png")


def test_visualize_real_photo(
    small_pair: tuple[Path, Path], imagenet_dir: Path, tmp_path: Path
) -> None:
    edge, server = (load_model(str(p)) for p in small_pair)
    photo, label = _first_photo(imagenet_dir)
    names = read_class_names(imagenet_dir / "classes.tsv")
    out = visualize_image(
        photo,
        edge,
        server,
        tmp_path / "panel.png",
        OperatingPoint(rule="top-k", threshold=20),
        class_names=names,
        label=label,
        compare_server=True,
    )
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 1000
    edge_only = visualize_image(photo, edge, None, tmp_path / "edge.png")
    assert edge_only.stat().st_size > 10_000


def test_cli_visualize(small_pair: tuple[Path, Path], imagenet_dir: Path, tmp_path: Path) -> None:
    edge_json, server_json = small_pair
    photo, _ = _first_photo(imagenet_dir)
    out = tmp_path / "panels"
    code = main(
        [
            "visualize", str(photo), str(photo),
            "--edge", str(edge_json),
            "--server", str(server_json),
            "--classes", str(imagenet_dir / "classes.tsv"),
            "--labels", str(imagenet_dir / "labels.csv"),
            "--threshold", "0.9",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    stem = photo.stem
    assert (out / f"{stem}.png").is_file() and (out / f"{stem}-2.png").is_file()
    assert output_names(["a/x.jpg", "b/x.png", "y.jpg"]) == ["x.png", "x-2.png", "y.png"]
    bad = main(["visualize", str(photo), "--edge", str(edge_json), "--compare-server",
                "--out", str(out)])  # fmt: skip
    assert bad == 2
