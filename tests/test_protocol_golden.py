"""Golden bytes written by hand from the protocol reference, not produced by our encoder,
so a mistake made symmetrically in encoder and decoder still fails here."""

from __future__ import annotations

import pytest

from membrane_py.vastapi import protocol as P

VAST = bytes.fromhex("56415354")


def test_getinfo_request_is_16_bytes():
    assert P.encode_request(P.Cmd.GETINFO) == bytes.fromhex(
        "56415354" "0400000000000000" "01000000")


def test_number_of_segments_reply_saying_5():
    frame = bytes.fromhex("56415354" "0900000000000000" "01000000" "0105000000")
    assert P.encode_reply(True, P.u32(5).encode()) == frame
    length = P.parse_header(frame[:12], 1 << 20)
    assert length == 9
    ok, payload = P.split_reply(frame[12:])
    assert ok
    assert P.Grouped.of(P.decode_values(payload)).uints == [5]


def test_mip_out_of_bounds_error_reply():
    frame = bytes.fromhex("56415354" "0900000000000000" "00000000" "010B000000")
    assert P.encode_error(11) == frame
    ok, payload = P.split_reply(frame[12:])
    assert not ok
    assert P.error_code_of(payload) == 11 == P.ErrorCode.MIP_OUT_OF_BOUNDS
    assert P.error_meaning(11) == "mip level out of bounds"


def test_error_payload_that_is_not_one_uint_is_unknown():
    assert P.error_code_of(bytes.fromhex("0107000000" "0108000000")) == 1
    assert P.error_code_of(b"") == 1


def test_getsegimageraw_request_and_reply_lengths():
    # mip 0, box minx=0 maxx=99 miny=0 maxy=99 minz=0 maxz=0: seven tagged uint32
    params = ("0100000000" "0100000000" "0163000000" "0100000000" "0163000000"
              "0100000000" "0100000000")
    expected = bytes.fromhex("56415354" "2700000000000000" "14000000" + params)
    assert P.encode_request(P.Cmd.GETSEGIMAGERAW, P.pack_box(0, (0, 99, 0, 99, 0, 0))) == expected
    # reply: 100*100 uint16 voxels -> L = 4 + 20000 = 20004 = 0x4E24
    reply_head = bytes.fromhex("56415354" "244E000000000000" "01000000")
    assert P.reply_header(True, 20000) == reply_head
    assert P.parse_header(reply_head[:12], 20004) == 20004


def test_getemimageraw_8bit_reply_length():
    # layer 0, mip 1, box 0,1,0,1,0,0 on an 8-bit layer: 2*2*1 voxels -> L = 8
    req = P.encode_request(P.Cmd.GETEMIMAGERAW, [P.u32(0)] + P.pack_box(1, (0, 1, 0, 1, 0, 0)))
    assert req[:16] == bytes.fromhex("56415354" "2C00000000000000" "1E000000")
    assert req[16:26] == bytes.fromhex("0100000000" "0101000000")
    frame = bytes.fromhex("56415354" "0800000000000000" "01000000" "0A0B0C0D")
    assert P.parse_header(frame[:12], 8) == 8
    ok, payload = P.split_reply(frame[12:])
    assert ok and bytes(payload) == bytes.fromhex("0A0B0C0D")


def test_text_value():
    assert P.text("ab").encode() == bytes.fromhex("03" "6162" "00")
    (v,) = P.decode_values(bytes.fromhex("03" "4C61796572" "00"))
    assert v.tag is P.Tag.TEXT and v.value == "Layer"


def test_data_block_value():
    assert P.block(b"\x01\x02\x03").encode() == bytes.fromhex("05" "03000000" "010203")
    (v,) = P.decode_values(bytes.fromhex("05" "02000000" "FFEE"))
    assert v.tag is P.Tag.BLOCK and v.value == b"\xff\xee"


def test_int32_double_uint64_values():
    assert P.i32(-1).encode() == bytes.fromhex("04FFFFFFFF")
    assert P.f64(1.0).encode() == bytes.fromhex("02" "000000000000F03F")
    values = P.decode_values(bytes.fromhex("06" "0100000000000080"))
    assert values[0].value == (1 << 63) + 1


def test_grouped_parsing_keeps_order_within_type():
    # u 7, i -2, d 2.5, u 9, t "x", i 3
    raw = bytes.fromhex("0107000000" "04FEFFFFFF" "02" "0000000000000440" "0109000000"
                        "037800" "0403000000")
    g = P.Grouped.of(P.decode_values(raw))
    assert g.uints == [7, 9]
    assert g.ints == [-2, 3]
    assert g.doubles == [2.5]
    assert g.texts == ["x"]
    assert g.counts() == (2, 1, 1, 2, 0, 0)


def test_decoding_stops_at_unknown_tag():
    raw = bytes.fromhex("0101000000" "09" "0102000000")
    assert [v.value for v in P.decode_values(raw)] == [1]


@pytest.mark.parametrize("raw", [
    "01010000",  # uint32 missing a byte
    "02000000",  # double cut short
    "03616263",  # text without terminator
    "050A000000" "0102",  # block says 10 bytes, 2 follow
    "0501",  # block length cut short
])
def test_truncated_values_raise(raw):
    with pytest.raises(P.ProtocolError):
        P.decode_values(bytes.fromhex(raw))


def test_parse_header_limits():
    good = bytes.fromhex("56415354" "0400000000000000")
    assert P.parse_header(good, 4) == 4
    with pytest.raises(P.ProtocolError, match="magic"):
        P.parse_header(bytes.fromhex("56415355" "0400000000000000"), 100)
    with pytest.raises(P.ProtocolError, match="shorter"):
        P.parse_header(bytes.fromhex("56415354" "0300000000000000"), 100)
    with pytest.raises(P.ProtocolError, match="exceeds"):
        P.parse_header(bytes.fromhex("56415354" "FFFFFFFFFFFFFFFF"), 1 << 31)
    with pytest.raises(P.ProtocolError, match="12 bytes"):
        P.parse_header(good[:11], 100)


def test_split_request():
    body = bytes.fromhex("68000000" "04FFFFFFFF")  # SETSELECTEDAPILAYERNR(-1)
    cmd, params = P.split_request(body)
    assert cmd == P.Cmd.SETSELECTEDAPILAYERNR == 104
    assert params == [P.i32(-1)]
