"""Tests of collabvit.data: discovery, conversion of odd image modes, skipping, preprocessing."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from collabvit.data import (
    IMAGE_EXTENSIONS,
    array_samples,
    discover,
    iter_batches,
    load_image,
    preprocess,
)
from collabvit.errors import DataError
from collabvit.models import Preprocessing

DEIT = Preprocessing((3, 224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.fixture(scope="module")
def photo(imagenet_dir: Path) -> Path:
    """A real photo (the first one of labels.csv)."""
    with open(imagenet_dir / "labels.csv", newline="") as fh:
        first = next(csv.DictReader(fh))["file"]
    return imagenet_dir / "images" / first


@pytest.fixture(scope="module")
def odd_images(photo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same real photo as grey JPEG, CMYK JPEG, palette PNG, RGBA PNG; plus bad files."""
    folder = tmp_path_factory.mktemp("odd")
    rgb = Image.open(photo).convert("RGB")
    paths = {
        "rgb": folder / "rgb.jpg",
        "grey": folder / "grey.jpg",
        "cmyk": folder / "cmyk.jpg",
        "palette": folder / "palette.png",
        "rgba": folder / "rgba.png",
        "text": folder / "notes.jpg",
        "truncated": folder / "truncated.jpg",
    }
    rgb.save(paths["rgb"], quality=95)
    rgb.convert("L").save(paths["grey"], quality=95)
    rgb.convert("CMYK").save(paths["cmyk"], quality=95)
    rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(paths["palette"])
    rgba = rgb.convert("RGBA")
    alpha = Image.new("L", rgb.size, 255)
    alpha.paste(0, (0, 0, 20, 20))  # a fully transparent top-left corner
    rgba.putalpha(alpha)
    rgba.save(paths["rgba"])
    paths["text"].write_text("this is not an image\n")
    data = paths["rgb"].read_bytes()
    paths["truncated"].write_bytes(data[: len(data) // 2])
    return paths


# ----------------------------------------------------------------------------- discovery


def _touch_image(path: Path, colour: tuple[int, int, int] = (10, 20, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


def test_image_folder_discovery(tmp_path: Path) -> None:
    _touch_image(tmp_path / "dog" / "b.png")
    _touch_image(tmp_path / "dog" / "a.png")
    _touch_image(tmp_path / "cat" / "z.png")
    _touch_image(tmp_path / "cat" / "deeper" / "y.png")
    (tmp_path / "cat" / ".hidden.png").write_bytes(b"")
    samples, classes = discover(tmp_path)
    assert classes == ["cat", "dog"]  # sorted: cat = 0, dog = 1
    assert [(s.index, s.file, s.label) for s in samples] == [
        (0, "cat/deeper/y.png", 0),
        (1, "cat/z.png", 0),
        (2, "dog/a.png", 1),
        (3, "dog/b.png", 1),
    ]
    assert all(s.path == tmp_path / s.file for s in samples)
    assert [s.file for s in discover(tmp_path, limit=2)[0]] == ["cat/deeper/y.png", "cat/z.png"]


def test_flat_folder_with_labels(tmp_path: Path) -> None:
    for name in ("x.jpg", "y.jpg", "z.jpg"):
        _touch_image(tmp_path / "images" / name)
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label,synset\nz.jpg,7,n0\nx.jpg,3,n1\n")
    samples, classes = discover(tmp_path / "images", labels)
    assert classes is None
    assert [(s.index, s.file, s.label) for s in samples] == [(0, "z.jpg", 7), (1, "x.jpg", 3)]


def test_flat_folder_without_labels(tmp_path: Path) -> None:
    _touch_image(tmp_path / "b.png")
    _touch_image(tmp_path / "a.JPG")
    (tmp_path / "readme.txt").write_text("not listed")
    samples, classes = discover(tmp_path)
    assert classes is None
    assert [(s.file, s.label) for s in samples] == [("a.JPG", -1), ("b.png", -1)]
    assert {".jpg", ".jpeg", ".png"} <= IMAGE_EXTENSIONS


def test_real_photos_with_labels(imagenet_dir: Path) -> None:
    samples, _ = discover(imagenet_dir / "images", imagenet_dir / "labels.csv", limit=5)
    assert len(samples) == 5
    assert all(0 <= s.label < 1000 for s in samples)
    assert all(s.path is not None and s.path.is_file() for s in samples)


def test_empty_folder_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="holds no images"):
        discover(tmp_path)
    (tmp_path / "empty-class").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        discover(tmp_path)


def test_missing_folder_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        discover(tmp_path / "absent")


def test_labels_naming_missing_files_is_a_data_error(tmp_path: Path) -> None:
    _touch_image(tmp_path / "images" / "here.jpg")
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\nhere.jpg,1\ngone.jpg,2\nalso-gone.jpg,3\n")
    with pytest.raises(DataError, match=r"gone\.jpg") as info:
        discover(tmp_path / "images", labels)
    assert "2 file(s)" in str(info.value)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("name,class\na.jpg,1\n", "'file' and 'label'"),
        ("file,label\na.jpg,cat\n", "line 2"),
        ("", "'file' and 'label'"),
    ],
)
def test_bad_labels_file_is_a_data_error(tmp_path: Path, content: str, match: str) -> None:
    _touch_image(tmp_path / "a.jpg")
    labels = tmp_path / "labels.csv"
    labels.write_text(content)
    with pytest.raises(DataError, match=match):
        discover(tmp_path, labels)


def test_missing_labels_file_is_a_data_error(tmp_path: Path) -> None:
    _touch_image(tmp_path / "a.jpg")
    with pytest.raises(DataError, match="labels file"):
        discover(tmp_path, tmp_path / "absent.csv")


# ----------------------------------------------------------------------------- conversion


@pytest.mark.parametrize("kind", ["rgb", "grey", "cmyk", "palette", "rgba"])
def test_odd_modes_become_rgb(kind: str, odd_images: dict[str, Path]) -> None:
    with Image.open(odd_images[kind]) as im:
        original_mode = im.mode
    assert (
        original_mode
        == {"rgb": "RGB", "grey": "L", "cmyk": "CMYK", "palette": "P", "rgba": "RGBA"}[kind]
    )
    image = load_image(odd_images[kind], 3)
    assert image is not None
    assert image.mode == "RGB"
    pixels = preprocess(image, DEIT)
    assert pixels.shape == (3, 224, 224) and pixels.dtype == torch.uint8
    # the conversion keeps the picture: close to the RGB version of the same photo
    reference = preprocess(load_image(odd_images["rgb"], 3), DEIT).float()  # type: ignore[arg-type]
    diff = (pixels.float().mean(0) - reference.mean(0)).abs().mean()
    assert float(diff) < 20, f"{kind}: mean brightness differs by {float(diff):.1f}"


def test_grey_image_has_equal_channels(odd_images: dict[str, Path]) -> None:
    image = load_image(odd_images["grey"], 3)
    assert image is not None
    array = np.asarray(image)
    assert (array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all()


def test_transparent_pixels_become_white(odd_images: dict[str, Path]) -> None:
    image = load_image(odd_images["rgba"], 3)
    assert image is not None
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((19, 19)) == (255, 255, 255)


def test_one_channel_models_get_grey(odd_images: dict[str, Path]) -> None:
    image = load_image(odd_images["cmyk"], 1)
    assert image is not None and image.mode == "L"
    prep = Preprocessing((1, 28, 28), (0.5,), (0.5,), crop_pct=1.0)
    assert preprocess(image, prep).shape == (1, 28, 28)


@pytest.mark.parametrize("kind", ["text", "truncated"])
def test_unreadable_file_is_none_with_a_warning(
    kind: str, odd_images: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="collabvit.data"):
        assert load_image(odd_images[kind], 3) is None
    assert any(odd_images[kind].name in r.getMessage() for r in caplog.records)


def test_iter_batches_skips_and_counts_unreadable_files(
    odd_images: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    root = odd_images["rgb"].parent
    samples, _ = discover(root)
    files = [s.file for s in samples]
    assert {"notes.jpg", "truncated.jpg"} <= set(files)
    skipped: list = []
    with caplog.at_level(logging.WARNING, logger="collabvit.data"):
        batches = list(iter_batches(samples, DEIT, batch_size=2, skipped=skipped))
    assert sorted(s.file for s in skipped) == ["notes.jpg", "truncated.jpg"]
    assert len(caplog.records) == 2
    kept = [s.file for b in batches for s in b.samples]
    assert kept == [f for f in files if f not in ("notes.jpg", "truncated.jpg")]
    assert [len(b.samples) for b in batches] == [2, 2, 1]
    for b in batches:
        assert b.pixels.shape == (len(b.samples), 3, 224, 224)
        assert b.pixels.dtype == torch.uint8


def test_array_samples_convert_to_the_model_channels() -> None:
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    samples = array_samples(images, np.array([4, 9]), prefix="t")
    assert [(s.file, s.label) for s in samples] == [("t00000", 4), ("t00001", 9)]
    rgb = Preprocessing((3, 28, 28), (0.5,) * 3, (0.5,) * 3, crop_pct=1.0)
    (batch,) = list(iter_batches(samples, rgb, batch_size=8))
    assert batch.pixels.shape == (2, 3, 28, 28)
    assert torch.equal(batch.pixels[1, 0], torch.from_numpy(images[1]))
    assert torch.equal(batch.pixels[:, 0], batch.pixels[:, 2])


# ----------------------------------------------------------------------------- preprocessing


def test_real_photo_preprocessing_matches_torchvision(photo: Path) -> None:
    image = load_image(photo, 3)
    assert image is not None
    pixels = preprocess(image, DEIT)
    assert pixels.shape == (3, 224, 224) and pixels.dtype == torch.uint8
    reference = transforms.Compose(
        [
            transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(224),
        ]
    )(Image.open(photo).convert("RGB"))
    expected = torch.from_numpy(np.asarray(reference).copy()).permute(2, 0, 1)
    assert torch.equal(pixels, expected)


def test_crop_pct_changes_the_resize(photo: Path) -> None:
    image = load_image(photo, 3)
    assert image is not None
    timm_crop = Preprocessing(DEIT.input_size, DEIT.mean, DEIT.std, crop_pct=0.9)
    assert timm_crop.resize_to == 248
    expected = transforms.CenterCrop(224)(
        transforms.Resize(248, interpolation=transforms.InterpolationMode.BICUBIC)(image)
    )
    got = preprocess(image, timm_crop)
    assert torch.equal(got, torch.from_numpy(np.asarray(expected).copy()).permute(2, 0, 1))
    assert not torch.equal(got, preprocess(image, DEIT))


def test_exact_size_image_passes_through_at_crop_pct_one() -> None:
    array = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    prep = Preprocessing((3, 64, 64), (0.5,) * 3, (0.5,) * 3, crop_pct=1.0)
    out = preprocess(Image.fromarray(array), prep)
    assert torch.equal(out, torch.from_numpy(array).permute(2, 0, 1))


def test_load_image_leaves_the_warning_filters_alone(
    odd_images: dict[str, Path], tmp_path: Path
) -> None:
    import warnings

    photo = Image.open(odd_images["rgb"]).convert("RGB")
    palette = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    transparent = tmp_path / "transparent-palette.png"
    palette.save(transparent, transparency=bytes(range(16)))  # Pillow would warn on convert
    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inner = list(warnings.filters)
        for kind in ("rgb", "palette", "rgba", "grey", "text"):
            for channels in (1, 3):
                load_image(odd_images[kind], channels)
        for channels in (1, 3):
            image = load_image(transparent, channels)
            assert image is not None and image.mode == ("RGB" if channels == 3 else "L")
        assert warnings.filters == inner  # load_image added or removed no filter
    assert warnings.filters == before
    assert not [w for w in caught if "Transparency" in str(w.message)]
