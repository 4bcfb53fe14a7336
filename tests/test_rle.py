"""Run-length coding of uint16 segmentation as VAST sends it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from membrane_py.vastapi.rle import MAX_RUN, rle_decode, rle_encode


def test_hand_written_stream():
    labels = np.array([[[0, 0, 5], [5, 5, 5]]], dtype=np.uint16)  # z=1, y=2, x=3
    pairs = rle_encode(labels)
    # runs wrap from row 0 into row 1: (0, 2), (5, 4)
    assert pairs.tolist() == [0, 2, 5, 4]
    assert rle_decode(pairs, 6).reshape(1, 2, 3).tolist() == labels.tolist()


def test_decode_from_little_endian_bytes():
    raw = bytes.fromhex("0700" "0300" "0000" "0100")
    assert rle_decode(raw, 4).tolist() == [7, 7, 7, 0]


def test_runs_longer_than_65535_are_split():
    labels = np.full(MAX_RUN * 2 + 10, 3, dtype=np.uint16)
    pairs = rle_encode(labels)
    assert pairs.tolist() == [3, MAX_RUN, 3, MAX_RUN, 3, 10]
    np.testing.assert_array_equal(rle_decode(pairs, labels.size), labels)


def test_run_wraps_across_sections():
    labels = np.zeros((3, 4, 5), dtype=np.uint16)
    labels[0, 3, 4] = labels[1] = labels[2, 0, 0] = 9
    pairs = rle_encode(labels)
    assert pairs.tolist() == [0, 19, 9, 22, 0, 19]
    np.testing.assert_array_equal(rle_decode(pairs, labels.size).reshape(labels.shape), labels)


def test_empty():
    assert rle_encode(np.zeros((0, 4, 4), np.uint16)).size == 0
    assert rle_decode(np.zeros(0, np.uint16), 0).size == 0


@pytest.mark.parametrize("words, n, match", [
    ([1, 2, 3], 2, "odd"),
    ([1, 0, 2, 2], 2, "length 0"),
    ([1, 2], 3, "covers 2 voxels, expected 3"),
    ([1, 5], 3, "covers 5"),
])
def test_bad_streams_raise(words, n, match):
    with pytest.raises(ValueError, match=match):
        rle_decode(np.array(words, dtype=np.uint16), n)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 65535), st.integers(1, 70000)), max_size=12))
def test_round_trip_property(runs):
    flat = np.concatenate([np.full(c, v, np.uint16) for v, c in runs] or [np.zeros(0, np.uint16)])
    pairs = rle_encode(flat)
    assert pairs.dtype == np.uint16
    counts = pairs[1::2]
    assert counts.size == 0 or (counts.min() >= 1)
    # adjacent pairs never repeat a value unless the first run is full
    vals = pairs[0::2]
    same = vals[1:] == vals[:-1]
    assert np.all(counts[:-1][same] == MAX_RUN)
    np.testing.assert_array_equal(rle_decode(pairs, flat.size), flat)
    np.testing.assert_array_equal(rle_decode(pairs.astype("<u2").tobytes(), flat.size), flat)
