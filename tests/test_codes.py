"""Pixel codes against hand-computed values, round trips, and the one PNG reader/writer."""

import cv2
import numpy as np
import pytest

from membrane_py.codes import (
    MISSING,
    classes_to_tile_u8,
    decode_label_png,
    encode_label_png,
    ids_to_rgb,
    infer_n_classes,
    label_codes,
    mix64,
    palette_rgb,
    probability_to_u8,
    read_png,
    rgb_to_ids,
    u8_to_probability,
    write_png,
)


def test_probability_encoding_by_hand():
    p = np.array([0.0, 1.0, 0.5, 0.25, 0.1, -0.2, 1.7])
    # 1 + round(254 p): 254 * 0.25 = 63.5 rounds up to 64; 254 * 0.1 = 25.4 -> 25; clipped
    assert probability_to_u8(p).tolist() == [1, 255, 128, 65, 26, 1, 255]
    assert probability_to_u8(p).dtype == np.uint8
    assert MISSING == 0 and probability_to_u8(np.linspace(0, 1, 1001)).min() == 1


def test_probability_decoding_by_hand():
    v = np.array([0, 1, 128, 255, 65], np.uint8)
    np.testing.assert_allclose(u8_to_probability(v, missing=0.75), [0.75, 0, 0.5, 1, 64 / 254])
    assert np.isnan(u8_to_probability(v, missing=np.nan)[0])
    assert u8_to_probability(v, missing=1.0).dtype == np.float32
    with pytest.raises(ValueError, match="uint8"):
        u8_to_probability(np.array([3], np.uint16), missing=1.0)


def test_probability_round_trips():
    codes = np.arange(1, 256, dtype=np.uint8)
    np.testing.assert_array_equal(probability_to_u8(u8_to_probability(codes, missing=0)), codes)
    p = np.linspace(0, 1, 10001, dtype=np.float32)
    back = u8_to_probability(probability_to_u8(p), missing=np.nan)
    assert np.abs(back - p).max() <= 0.5 / 254 + 1e-6


def test_label_png_codes_by_hand():
    assert label_codes(2).tolist() == [0, 255]
    assert label_codes(3).tolist() == [0, 128, 255]  # mEMbrain's 3-class codes
    assert label_codes(5).tolist() == [0, 64, 128, 191, 255]  # 63.75, 127.5, 191.25
    classes = np.array([[1, 2, 3], [3, 2, 1]])
    assert encode_label_png(classes, 3).tolist() == [[0, 128, 255], [255, 128, 0]]
    with pytest.raises(ValueError, match="2..256"):
        label_codes(1)


@pytest.mark.parametrize("k", [2, 3, 5, 256])
def test_label_png_round_trip(k):
    classes = (np.arange(1000) % k + 1).reshape(10, 100)
    png = encode_label_png(classes, k)
    assert png.dtype == np.uint8 and png.min() == 0 and png.max() == 255
    np.testing.assert_array_equal(decode_label_png(png, k), classes)
    assert infer_n_classes(png) == k
    with pytest.raises(ValueError, match="no unknown"):
        encode_label_png(classes - 1, k)


def test_label_png_rejects_foreign_values():
    with pytest.raises(ValueError, match="not codes"):
        decode_label_png(np.array([[0, 100]], np.uint8), 2)
    with pytest.raises(ValueError, match="no class encoding"):
        infer_n_classes(np.array([0, 300]))  # K = 256 codes are all of 0..255


def test_class_tile_codes_by_hand():
    assert classes_to_tile_u8(np.array([1, 2]), 2).tolist() == [128, 255]
    assert classes_to_tile_u8(np.array([1, 2, 3]), 3).tolist() == [85, 170, 255]
    # 255 k / 6 = 42.5, 85, 127.5, 170, 212.5, 255: halves round up
    assert classes_to_tile_u8(np.arange(1, 7), 6).tolist() == [43, 85, 128, 170, 213, 255]
    assert classes_to_tile_u8(np.ones((2, 2), int), 1).tolist() == [[255, 255], [255, 255]]


def test_ids_rgb_by_hand():
    ids = np.array([[0, 1, 256, 70000, (1 << 24) - 1]])
    rgb = ids_to_rgb(ids)
    # 70000 = 1 * 65536 + 17 * 256 + 112
    assert rgb[0].tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 17, 112], [255, 255, 255]]
    assert rgb_to_ids(rgb).tolist() == ids.tolist()
    with pytest.raises(ValueError, match="zarr/TIFF"):
        ids_to_rgb(np.array([1 << 24]))
    with pytest.raises(ValueError, match="zarr/TIFF"):
        ids_to_rgb(np.array([-1]))


def _splitmix_finaliser(x: int) -> int:
    """The splitmix64 finaliser in plain Python integers (an independent reference)."""
    m = (1 << 64) - 1
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & m
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & m
    return x ^ (x >> 31)


def test_palette_colours():
    values = [0, 1, 7, 123456789]
    assert mix64(np.array(values, np.uint64)).tolist() == [_splitmix_finaliser(v) for v in values]
    h = _splitmix_finaliser(7)
    expected = [64 + ((h >> s) & 255) * 3 // 4 for s in (40, 48, 56)]
    assert palette_rgb(np.array([7])).tolist() == [expected]
    pal = palette_rgb(np.arange(0, 1000))
    assert (pal[0] == 0).all() and pal[1:].min() >= 64
    assert len({tuple(c) for c in pal[1:]}) > 990  # distinct colours


def test_png_write_read(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[..., 0] = 200  # red
    deep = np.array([[0, 65535], [1000, 7]], np.uint16)
    for name, img in (("g.png", gray), ("c.png", rgb), ("d.png", deep)):
        write_png(tmp_path / name, img)
        back = read_png(tmp_path / name)
        assert back.dtype == img.dtype
        np.testing.assert_array_equal(back, img)
    assert cv2.imread(str(tmp_path / "c.png"))[0, 0].tolist() == [0, 0, 200]  # BGR on disk
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "d.png", "g.png"]


def test_png_reader_alpha_missing_and_damaged(tmp_path):
    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[..., 0], bgra[..., 3] = 50, 255  # blue, opaque
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    assert read_png(tmp_path / "a.png")[0, 0].tolist() == [0, 0, 50]
    assert read_png(tmp_path / "none.png") is None
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    assert read_png(tmp_path / "bad.png") is None
