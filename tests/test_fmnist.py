"""The shipped edge/server pair and test split: offline, and as documented."""

from __future__ import annotations

import pytest
import torch

from collabvit.fmnist import CLASS_NAMES, cluttered_test_split, shipped_test_split
from collabvit.models import SHIPPED_MODELS, load_model
from collabvit.training import evaluate_classifier

SLICE = 1000  # the documented accuracies are on the first 1,000 shipped test images


def test_shipped_test_split_is_the_fmnist_test_set() -> None:
    images, labels = shipped_test_split()
    assert images.shape == (10_000, 28, 28) and labels.shape == (10_000,)
    assert sorted(set(labels.tolist())) == list(range(10))
    assert (labels == 0).sum() == 1000  # 1,000 images per class


@pytest.mark.parametrize("name", SHIPPED_MODELS)
def test_shipped_model_reproduces_documented_accuracy(name: str) -> None:
    torch.set_num_threads(1)
    model = load_model(name)  # no network, no path: from the package
    assert model.class_names == CLASS_NAMES
    prep = model.preprocessing
    documented = model.extra["documented"]["first_1000_test_accuracy"]
    if name.startswith("cfmnist"):  # the seed-0 cluttered canvases of the shipped split
        assert prep.input_size == (1, 56, 56) and model.num_patches == 49
        data = cluttered_test_split(0, limit=SLICE)
        images, labels = data.images, data.labels
    else:
        assert prep.input_size == (1, 28, 28) and model.num_patches == 49
        images, labels = (a[:SLICE] for a in shipped_test_split())
    measured = evaluate_classifier(model.model, images, labels, mean=prep.mean, std=prep.std)
    assert abs(measured - documented) <= 0.5, (name, measured, documented)


@pytest.mark.parametrize(
    ("pair", "max_edge", "gap"), [("fmnist", 300_000, 3.0), ("cfmnist", 200_000, 5.0)]
)
def test_shipped_pair_is_tiny_vs_base(pair: str, max_edge: int, gap: float) -> None:
    edge, server = load_model(f"{pair}-tiny"), load_model(f"{pair}-base")
    n_edge = sum(p.numel() for p in edge.model.parameters())
    n_server = sum(p.numel() for p in server.model.parameters())
    assert 100_000 <= n_edge <= max_edge
    assert n_server >= 5 * n_edge
    assert edge.grid_size == server.grid_size
    edge_acc = edge.extra["documented"]["test_accuracy"]
    server_acc = server.extra["documented"]["test_accuracy"]
    assert server_acc - edge_acc >= gap


def test_visualize_panel_of_a_shipped_test_image(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    from collabvit.engine import OperatingPoint
    from collabvit.visualize import visualize_image

    images, labels = shipped_test_split()
    photo = tmp_path / "t10k-00000.png"
    Image.fromarray(images[0]).save(photo)
    edge, server = load_model("fmnist-tiny"), load_model("fmnist-base")
    out = visualize_image(
        photo,
        edge,
        server,
        tmp_path / "panel.png",
        point=OperatingPoint(threshold=0.9),
        label=int(labels[0]),
        compare_server=True,
    )
    panel = Image.open(out)
    assert panel.format == "PNG" and panel.width > 400 and panel.height > 150
    # not a blank canvas: the panel shows the image, maps and text
    assert len(set(panel.convert("L").getdata())) > 20
