"""Record layouts pinned by golden bytes written by hand from the protocol reference.

Every hex string below was derived from the word lists in the reference document (section 4),
not produced by our encoder, so a layout mistake made symmetrically in the client's decoder
and the server's encoder (they share :mod:`membrane_py.vastapi.records`) still fails here.
"""

from __future__ import annotations

import numpy as np
import pytest

from membrane_py.vastapi import records as R
from membrane_py.vastapi.protocol import Grouped, decode_values, encode_values

# GETALLSEGMENTDATA, N = 1: flags 0x10000, col1 0x0A141E01, col2 0xFF000000, anchor (5, 6, -1),
# parent 2, child 0, prev 1, next 3, collapsednr 4, bbox (-1, 0, 1, 10, 20, 30).
SEGMENTS = bytes.fromhex(
    "01000000"
    "00000100" "011E140A" "000000FF" "05000000" "06000000" "FFFFFFFF"
    "02000000" "00000000" "01000000" "03000000" "04000000"
    "FFFFFFFF" "00000000" "01000000" "0A000000" "14000000" "1E000000")
SEGMENT_WORDS = [0x10000, 0x0A141E01, 0xFF000000, 5, 6, -1, 2, 0, 1, 3, 4, -1, 0, 1, 10, 20, 30]

# GETANNOLAYEROBJECTDATA, N = 1: a used skeleton (type 1 | bit 16), col1 0x11223344, col2 0,
# anchor (7, 8, 9), parent 0, child 0, prev 0, next 2, collapsed 1, bbox (7, 8, 9, 70, 80, 90),
# userflags lo 5 hi 1, userid lo 0xDEADBEEF hi 0.
ANNO = bytes.fromhex(
    "01000000"
    "01000100" "44332211" "00000000" "07000000" "08000000" "09000000"
    "00000000" "00000000" "00000000" "02000000" "01000000"
    "07000000" "08000000" "09000000" "46000000" "50000000" "5A000000"
    "05000000" "01000000" "EFBEADDE" "00000000")

# GETAONODEDATA, N = 1: selected, (100, 200, 3), parent none, child 1, next none, w7 0,
# radius 2.5 (0x4004000000000000), w10 w11 0.
NODES = bytes.fromhex(
    "01000000"
    "01000000" "64000000" "C8000000" "03000000" "FFFFFFFF" "01000000" "FFFFFFFF"
    "00000000" "0000000000000440" "00000000" "00000000")


def test_segment_record_decodes_and_encodes_the_reference_words():
    (rec,) = R.decode_counted(SEGMENTS, R.SEGMENT_RECORD)
    seg = R.SegmentData.from_record(7, rec)
    assert seg == R.SegmentData(id=7, flags=0x10000, col1=0x0A141E01, col2=0xFF000000,
                                anchor=(5, 6, -1), parent=2, child=0, prev=1, next=3,
                                collapsed_nr=4, bbox=(-1, 0, 1, 10, 20, 30))
    # the server keeps int64 rows of words; negative values must wrap to int32 words
    wire = R.encode_counted(R.records_from_words(np.array([SEGMENT_WORDS]), R.SEGMENT_RECORD))
    assert wire.tobytes() == SEGMENTS


def test_anno_record_decodes_and_encodes_the_reference_words():
    (rec,) = R.decode_counted(ANNO, R.ANNO_RECORD)
    obj = R.AnnoObject.from_record(1, rec)
    assert (obj.type, obj.flags, obj.col1, obj.anchor) == (1, 1, 0x11223344, (7, 8, 9))
    assert (obj.next, obj.collapsed, obj.bbox) == (2, 1, (7, 8, 9, 70, 80, 90))
    assert (obj.user_flags, obj.user_id) == (0x1_0000_0005, 0xDEADBEEF)
    words = np.frombuffer(ANNO, "<u4", offset=4).astype(np.int64)
    assert R.encode_counted(R.records_from_words(words, R.ANNO_RECORD)).tobytes() == ANNO


def test_anno_and_segment_tables_share_their_first_17_columns():
    seg, anno = R.word_columns(R.SEGMENT_RECORD), R.word_columns(R.ANNO_RECORD)
    assert all(anno[name] == cols for name, cols in seg.items())
    assert seg["bbox"] == slice(11, 17) and anno["userid"] == slice(19, 21)


def test_node_record_decodes_and_encodes_the_reference_words():
    (rec,) = R.decode_counted(NODES, R.NODE_RECORD)
    node = R.SkeletonNode.from_record(0, rec)
    assert node == R.SkeletonNode(dfs_nr=0, x=100, y=200, z=3, parent=-1, child=1, next=-1,
                                  flags=1, radius=2.5)
    built = np.zeros(1, R.NODE_RECORD)
    built["flags"], built["xyz"], built["radius"] = 1, (100, 200, 3), 2.5
    built["links"] = (R.NONE32, 1, R.NONE32)
    assert R.encode_counted(built).tobytes() == NODES


def test_mip_factors_and_names():
    factors = bytes.fromhex("02000000" "01000000" "01000000" "01000000"
                            "02000000" "02000000" "01000000")
    rows = R.decode_counted(factors, R.MIP_FACTORS_RECORD)
    assert rows["factors"].tolist() == [[1, 1, 1], [2, 2, 1]]
    names = bytes.fromhex("02000000" "4261636B67726F756E6400" "6100")
    assert R.decode_names(names) == ["Background", "a"]
    assert R.encode_names(["Background", "a"]) == names


@pytest.mark.parametrize("payload", [b"\x01\x00", SEGMENTS[:-1], SEGMENTS + b"\0" * 4])
def test_wrong_sizes_are_refused(payload):
    with pytest.raises(R.RecordError):
        R.decode_counted(payload, R.SEGMENT_RECORD)


@pytest.mark.parametrize("payload", [bytes.fromhex("02000000" "6100"),
                                     bytes.fromhex("01000000" "6100" "62")])
def test_bad_name_lists_are_refused(payload):
    with pytest.raises(R.RecordError):
        R.decode_names(payload)


def _round_trip(record, hex_values: str, counts: tuple[int, int, int, int]) -> None:
    """``record`` encodes to the hand-written values and decodes back from them."""
    raw = bytes.fromhex(hex_values)
    assert encode_values(record.to_values()) == raw
    g = Grouped.of(decode_values(raw))
    assert (len(g.uints), len(g.doubles), len(g.texts), len(g.ints)) == counts
    assert type(record).from_grouped(g) == record


def test_getinfo_values():
    # 7u x=256 y=128 z=8, cube 16 16 16, 4 mips; 3d voxel x=4 y=5 z=30; 3i view 1 2 3
    info = R.VastInfo(data_size=(8, 128, 256), cube_size=(16, 16, 16), n_mips=4,
                      voxel_size=(30.0, 5.0, 4.0), view=(1, 2, 3))
    _round_trip(info,
                "0100010000" "0180000000" "0108000000" "0110000000" "0110000000" "0110000000"
                "0104000000" "020000000000001040" "020000000000001440" "020000000000003E40"
                "0401000000" "0402000000" "0403000000", R.VastInfo.COUNTS)


def test_segment_data_values():
    seg = R.SegmentData(id=3, flags=0, col1=1, col2=2, anchor=(4, 5, 6), parent=7, child=8,
                        prev=9, next=10, collapsed_nr=11, bbox=(-1, 0, 1, 2, 3, 4))
    _round_trip(seg,
                "0103000000" "0100000000" "0101000000" "0102000000" "0107000000" "0108000000"
                "0109000000" "010A000000" "010B000000" "0404000000" "0405000000" "0406000000"
                "04FFFFFFFF" "0400000000" "0401000000" "0402000000" "0403000000" "0404000000",
                R.SegmentData.COUNTS)


def test_layer_info_values():
    # 8i type 1, editable, not visible, brightness -2, contrast 3, blend 0, add 1, unchanged;
    # 3d 1.0 0.5 0.0; 7u tint 0xFFFFFF00, targets 255 128 0, 2 bytes/pixel, not inverted, solo;
    # 1t "seg"
    info = R.LayerInfo(type=1, editable=True, visible=False, brightness=-2, contrast=3,
                       blend_mode=0, blend_or_add=1, is_changed=False, opacity_level=1.0,
                       brightness_level=0.5, contrast_level=0.0, tint_color=0xFFFFFF00,
                       target_color=(255, 128, 0), bytes_per_pixel=2, inverted=False,
                       solo_mode=True, name="seg")
    _round_trip(info,
                "0401000000" "0401000000" "0400000000" "04FEFFFFFF" "0403000000" "0400000000"
                "0401000000" "0400000000" "02000000000000F03F" "02000000000000E03F"
                "020000000000000000" "0100FFFFFF" "01FF000000" "0180000000" "0100000000"
                "0102000000" "0100000000" "0101000000" "0373656700", R.LayerInfo.COUNTS)


def test_selected_layers_values_and_the_vast_12_form():
    sel = R.SelectedLayers(selected=2, em=0, annotation=1, segmentation=-1, tool=-1)
    _round_trip(sel, "0402000000" "0400000000" "0401000000" "04FFFFFFFF" "04FFFFFFFF",
                (0, 0, 0, 5))
    old = Grouped.of(decode_values(bytes.fromhex("0402000000" "0400000000" "0403000000")))
    assert R.SelectedLayers.from_grouped(old) == R.SelectedLayers(2, 0, -1, 3, -1)
    with pytest.raises(R.RecordError):
        R.SelectedLayers.from_grouped(Grouped.of(decode_values(bytes.fromhex("0401000000"))))
