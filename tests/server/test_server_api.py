"""The three steps without HTTP: decode, predict, encode, the config and the errors they raise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from server_support import alone, first_photos, mask_of, preprocessed

import collabvit.server as server
from collabvit.errors import (
    CollabViTError,
    ConfigError,
    PayloadTooLarge,
    ServerBusy,
    ServerError,
    WireError,
)
from collabvit.models import LoadedModel, load_model
from collabvit.server import (
    ImageTooLarge,
    QueueFullError,
    ServerConfig,
    decode_image,
    decode_request,
    encode_response,
    geometry_of,
    predict_batch,
)
from collabvit.wire import encode


@pytest.fixture(scope="module")
def server_model(small_pair: tuple[Path, Path]) -> LoadedModel:
    return load_model(str(small_pair[1]))


@pytest.fixture(scope="module")
def photos(imagenet_dir: Path) -> list[Path]:
    return first_photos(imagenet_dir, 3)


@pytest.fixture(scope="module")
def pixels(server_model: LoadedModel, photos: list[Path]) -> list[np.ndarray]:
    """Real photos preprocessed for the server: (3, 64, 64) uint8 each."""
    return preprocessed(server_model, photos)


def test_the_former_names_are_the_error_tree_classes() -> None:
    assert ImageTooLarge is PayloadTooLarge and QueueFullError is ServerBusy
    assert issubclass(PayloadTooLarge, WireError)
    for error in (PayloadTooLarge, ServerBusy, ServerError):
        assert issubclass(error, CollabViTError), error
    assert {"ImageTooLarge", "QueueFullError", "create_app", "Batcher"} <= set(server.__all__)


def test_decode_and_predict_batch_match_each_image_run_alone(
    server_model: LoadedModel, pixels: list[np.ndarray]
) -> None:
    geometry = geometry_of(server_model)
    masks = [mask_of(k, offset=i) for i, k in enumerate((3, 40, 64))]
    batch = [
        decode_request(encode(p, m, 8), geometry, 1 << 20)
        for p, m in zip(pixels, masks, strict=True)
    ]
    for decoded, image, mask in zip(batch, pixels, masks, strict=True):
        assert decoded.keep_mask.tolist() == mask.tolist()
        top, left = divmod(int(mask.argmax()), 8)  # the first kept patch of the 8 x 8 grid
        patch = np.s_[:, 8 * top : 8 * top + 8, 8 * left : 8 * left + 8]
        assert torch.equal(decoded.pixels[patch], torch.from_numpy(image[patch]))
    logits = predict_batch(server_model, batch)
    assert logits.shape == (3, server_model.num_classes) and logits.dtype == torch.float32
    for row, image, mask in zip(logits, pixels, masks, strict=True):
        assert torch.allclose(row, alone(server_model, image, mask), atol=1e-4)
        answer = encode_response(server_model, row, top_k=3)
        assert answer["label"] == int(row.argmax())
        assert [t["label"] for t in answer["top5"]] == row.topk(3).indices.tolist()


def test_the_steps_raise_errors_of_the_one_tree(
    server_model: LoadedModel, photos: list[Path], pixels: list[np.ndarray]
) -> None:
    geometry = geometry_of(server_model)
    with pytest.raises(WireError, match="no patch") as no_patch:
        decode_request(encode(pixels[0], np.zeros(64, dtype=bool), 8), geometry, 1 << 20)
    with pytest.raises(WireError, match="not a readable image") as not_image:
        decode_image(b"not an image", server_model, 1000)
    with pytest.raises(ImageTooLarge, match="pixels") as too_large:
        decode_image(photos[0].read_bytes(), server_model, 1000)
    assert type(too_large.value) is PayloadTooLarge
    for raised in (no_patch, not_image, too_large):
        assert isinstance(raised.value, CollabViTError)
    full = decode_image(photos[0].read_bytes(), server_model, 10**8)
    assert full.pixels.shape == (3, 64, 64) and bool(full.keep_mask.all())


@pytest.mark.parametrize(
    "field,value",
    [
        ("max_batch_size", 0),
        ("max_queue", 0),
        ("max_body_bytes", -1),
        ("max_wait_ms", -1.0),
        ("top_k", 0),
        ("token", ""),
    ],
)
def test_server_config_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ConfigError):
        ServerConfig(**{field: value})  # type: ignore[arg-type]
