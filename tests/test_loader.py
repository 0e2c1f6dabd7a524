"""collabvit.loader: the torch DataLoader gives data.iter_batches' batches, whatever the workers."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from collabvit import wire
from collabvit.data import Preprocessing, Sample, array_samples, iter_batches
from collabvit.errors import ConfigError
from collabvit.loader import FILE_SIZES, ImageStream, _Ring, next_batch
from collabvit.loader import iter_batches as loader_batches
from collabvit.sweep.pixels import PixelStore
from collabvit.sweep.server_pass import raw_message_bytes
from collabvit.workers import check_shared_memory, resolve_workers

pytestmark = pytest.mark.usefixtures("one_thread")

PREP = Preprocessing((3, 64, 64), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
N_IMAGES = 20


@pytest.fixture(scope="module")
def photos(
    photo_linker: Callable[..., list[Sample]], tmp_path_factory: pytest.TempPathFactory
) -> list[Sample]:
    """20 real photos with two unreadable files (one at a batch edge, one at the end)."""
    broken = {5: ("broken-a.JPEG", b"not an image", 1), N_IMAGES: ("broken-z.JPEG", b"", 2)}
    return photo_linker(tmp_path_factory.mktemp("loader-photos"), N_IMAGES, broken)


def _reference(
    samples: list[Sample], batch: int
) -> tuple[list[list[int]], list[torch.Tensor], list[int]]:
    skipped: list[Sample] = []
    got = list(iter_batches(samples, PREP, batch, skipped))
    return (
        [[s.index for s in b.samples] for b in got],
        [b.pixels for b in got],
        [s.index for s in skipped],
    )


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("batch", [4, 7])
def test_same_batches_as_data_iter_batches(photos: list[Sample], workers: int, batch: int) -> None:
    ids, pixels, skipped_ref = _reference(photos, batch)
    skipped: list[Sample] = []
    got = list(loader_batches(photos, PREP, batch, skipped, workers=workers))
    assert [[s.index for s in b.samples] for b in got] == ids
    assert all(torch.equal(a.pixels, b) for a, b in zip(got, pixels, strict=True))
    assert [s.index for s in skipped] == skipped_ref == [6, N_IMAGES + 1]
    assert all(b.pixels.dtype == torch.uint8 and len(b.samples) == batch for b in got[:-1])


def test_reused_worker_slots_never_change_a_batch_already_handed_out(
    photos: list[Sample],
) -> None:
    # one image per block: the workers' 7 shared slots are reused three times over
    ids, pixels, _ = _reference(photos, 3)
    stream = ImageStream(photos, PREP, block=1, workers=2)
    held = []
    while (got := next_batch(stream, 3)) is not None:
        held.append(got)
    stream.close()
    assert [[photos[p].index for p in b.positions] for b in held] == ids
    assert all(torch.equal(a.pixels, b) for a, b in zip(held, pixels, strict=True))


def test_a_consumer_that_drops_its_batches_reads_the_slots_in_place(
    photos: list[Sample],
) -> None:
    # block == batch: a whole block is a batch; dropped, its slot is written again
    readable = [s for s in photos if s.path is not None and "broken" not in s.path.name]
    ids, pixels, _ = _reference(readable, 2)
    stream = ImageStream(readable, PREP, block=2, workers=2)
    assert stream._ring is not None
    slots = {t.untyped_storage().data_ptr() for t in stream._ring.slots}
    in_place, seen = 0, []
    while (got := next_batch(stream, 2)) is not None:
        assert torch.equal(got.pixels, pixels[len(seen)])  # checked before it is dropped
        in_place += got.pixels.untyped_storage().data_ptr() in slots
        seen.append([readable[p].index for p in got.positions])
        del got
    stream.close()
    assert seen == ids and in_place == len(ids) == 10  # 10 batches through 7 slots


def test_a_slot_something_still_reads_is_never_given_out() -> None:
    ring = _Ring(2, 1, (1, 2, 2))
    view, array = ring.slots[0][:1], ring.slots[1].numpy()
    assert ring.claim() == -1  # both read: the worker returns fresh memory instead
    del view
    assert ring.claim() == 0 and ring.claim() == -1  # 0 is now busy (an item in flight)
    del array
    assert ring.claim() == 1


def test_array_samples_and_a_stream_started_midway() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)
    samples = array_samples(images, np.arange(10))
    prep = Preprocessing((1, 28, 28), (0.5,), (0.5,), crop_pct=1.0)
    whole = torch.cat([b.pixels for b in iter_batches(samples, prep, 3)])
    stream = ImageStream(samples, prep, block=3, workers=2, start=4)
    first = next_batch(stream, 3, end=6)  # stops at the end given, short
    assert first is not None and first.positions == [4, 5] and stream.position == 6
    rest = next_batch(stream, 3)
    assert rest is not None and rest.positions == [6, 7, 8]
    assert torch.equal(torch.cat([first.pixels, rest.pixels]), whole[4:9])
    stream.close()


def test_file_sizes_are_measured_by_the_workers(photos: list[Sample]) -> None:
    stream = ImageStream(photos[:3], PREP, block=2, workers=2, file_sizes=True)
    batch = next_batch(stream, 3)
    assert batch is not None and len(batch.sizes) == 3
    for px, sizes in zip(batch.pixels, batch.sizes, strict=True):
        hwc = px.permute(1, 2, 0).numpy()
        assert sizes == [wire.full_image_bytes(hwc, fmt, 90) for _, fmt in FILE_SIZES]
    stream.close()


def test_workers_are_checked() -> None:
    assert resolve_workers(3, 100, 10) == 3
    assert resolve_workers(None, 5, 10) == 0  # one batch: no worker processes
    assert resolve_workers(None, 100, 10) >= 1
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="--workers"):
            resolve_workers(bad, 100, 10)  # type: ignore[arg-type]


def test_raw_message_size_is_arithmetic() -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (3, 64, 64), dtype=np.uint8)
    for kept in (0, 1, 17, 64):
        mask = np.zeros(64, dtype=bool)
        mask[rng.choice(64, kept, replace=False)] = True
        assert raw_message_bytes(kept, 64, 3, 8) == len(wire.encode(pixels, mask, 8, "raw", 0))


def test_pixel_store_spills_past_its_budget(tmp_path: Path) -> None:
    a = torch.arange(24, dtype=torch.uint8).reshape(2, 3, 2, 2)
    b = a + 100
    store = PixelStore(tmp_path, memory_bytes=a.numel())  # room for one chunk
    store.put(0, a)
    store.put(1, b)
    assert len(list(tmp_path.rglob("*.npy"))) == 1
    assert torch.equal(store.take(1), b) and torch.equal(store.take(0), a)  # type: ignore[arg-type]
    assert store.take(0) is None
    store.put(2, b)
    store.close()
    assert not list(tmp_path.rglob("*.npy"))


def test_workers_whose_slots_do_not_fit_in_shared_memory_are_one_line(tmp_path: Path) -> None:
    """A container's small /dev/shm is refused before any worker starts, not as a bus error."""
    st = os.statvfs(tmp_path)
    free = st.f_bavail * st.f_frsize
    check_shared_memory(min(free // 2, 2**20), 2, str(tmp_path))  # fits: no error
    with pytest.raises(ConfigError) as err:
        check_shared_memory(free + 2**30, 3, str(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and "--workers 3 needs" in msg and str(tmp_path) in msg
    assert "--shm-size" in msg
    check_shared_memory(2**60, 2, str(tmp_path / "absent"))  # no such filesystem: not checked
