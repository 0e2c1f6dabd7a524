"""Issue 16, item 16: the sweep cache keys each file on its content, not its size.

An image replaced in place by another image of exactly the same byte size used
to reuse the cached model outputs of the old image (the data fingerprint held
only file sizes). The rerun must equal a fresh run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from collabvit.data import Sample, discover
from collabvit.models import LoadedModel, load_model
from collabvit.pipeline import OperatingPoint
from collabvit.sweep import Series, SweepGrid, data_identity, run_sweep

pytestmark = pytest.mark.usefixtures("one_thread")

N_IMAGES = 8
GRID = SweepGrid(
    series=(Series("attention-sum", (0.9, 0.97), "min-entropy", (0.5, 9.0)),),
    reference_delta_sums=(0.9,),
    encoder_thresholds=(),
)
POINT = OperatingPoint("mean", "attention-sum", 0.9, "min-entropy", 9.0)


@pytest.fixture(scope="module")
def pair(small_pair: tuple[Path, Path]) -> tuple[LoadedModel, LoadedModel]:
    return load_model(str(small_pair[0])), load_model(str(small_pair[1]))


def _copy_photos(imagenet_dir: Path, folder: Path) -> list[str]:
    folder.mkdir()
    lines = (imagenet_dir / "labels.csv").read_text().splitlines()[1 : N_IMAGES + 1]
    names, rows = [], ["file,label"]
    for line in lines:
        name, label = line.split(",")[:2]
        shutil.copy(imagenet_dir / "images" / name, folder / name)  # real files: changed below
        names.append(name)
        rows.append(f"{name},{label}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return names


def _same_size_other_image(folder: Path, names: list[str]) -> str:
    """Overwrite the largest photo with a smaller one padded to the same byte size.

    JPEG decoders stop at the end-of-image marker, so the padding is never read:
    the file holds another picture at exactly the old size.
    """
    by_size = sorted(names, key=lambda n: (folder / n).stat().st_size)
    target, donor = by_size[-1], by_size[0]
    old_size = (folder / target).stat().st_size
    body = (folder / donor).read_bytes()
    assert len(body) < old_size
    (folder / target).write_bytes(body + b"\0" * (old_size - len(body)))
    assert (folder / target).stat().st_size == old_size
    return target


def _sweep(pair: tuple[LoadedModel, LoadedModel], samples: list[Sample], cache: Path | None):
    edge, server = pair
    return run_sweep(edge, server, samples, GRID, batch_size=4, cache_dir=cache, chunk_size=4)


def test_an_image_changed_at_the_same_size_is_not_served_from_the_cache(
    pair: tuple[LoadedModel, LoadedModel], imagenet_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    names = _copy_photos(imagenet_dir, folder)
    samples, _ = discover(folder, folder / "labels.csv")
    cache = tmp_path / "cache"
    before = _sweep(pair, samples, cache)
    identity_before = data_identity(samples)

    changed = _same_size_other_image(folder, names)
    samples, _ = discover(folder, folder / "labels.csv")
    rerun = _sweep(pair, samples, cache)
    fresh = _sweep(pair, samples, None)

    j = names.index(changed)
    assert before.records(POINT)[j] != fresh.records(POINT)[j]  # the change is material
    assert rerun.records(POINT) == fresh.records(POINT)
    assert rerun.rows == fresh.rows
    assert rerun.stats.edge_images == len(samples)  # recomputed, not taken from the cache
    assert data_identity(samples) != identity_before
    # and an unchanged folder still reuses everything
    again = _sweep(pair, samples, cache)
    assert again.stats.edge_images == again.stats.server_images == 0
    assert again.rows == fresh.rows
