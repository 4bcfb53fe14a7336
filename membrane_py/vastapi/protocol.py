"""VAST Remote Control API wire format: framing, tagged values, commands, error codes.

Pure functions over bytes, no sockets, so that the client and the bundled server share one
codec and tests can check it byte by byte. Everything is little-endian.

Request frame: ``b"VAST"``, uint64 L, uint32 command, tagged parameters (L = 4 + len(params)).
Reply frame:   ``b"VAST"``, uint64 L, int32 flag (1 success, 0 failure), payload.
A payload is either tagged values ("typed") or raw bytes ("bulk", image and list commands).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

MAGIC = b"VAST"
HEADER = struct.Struct("<4sQ")  # magic, length of everything after this field
HEADER_SIZE = HEADER.size  # 12
DEFAULT_PORT = 22081


class Cmd(IntEnum):
    """Command numbers of the VAST Lite 1.5 remote API."""

    GETINFO = 1
    GETNUMBEROFSEGMENTS = 2
    GETSEGMENTDATA = 3
    GETSEGMENTNAME = 4
    SETANCHORPOINT = 5
    SETSEGMENTNAME = 6
    SETSEGMENTCOLOR = 7
    GETVIEWCOORDINATES = 8
    GETVIEWZOOM = 9
    SETVIEWCOORDINATES = 10
    SETVIEWZOOM = 11
    GETNROFLAYERS = 12
    GETLAYERINFO = 13
    GETALLSEGMENTDATA = 14
    GETALLSEGMENTNAMES = 15
    SETSELECTEDSEGMENTNR = 16
    GETSELECTEDSEGMENTNR = 17
    SETSELECTEDLAYERNR = 18
    GETSELECTEDLAYERNR = 19
    GETSEGIMAGERAW = 20
    GETSEGIMAGERLE = 21
    GETSEGIMAGESURFRLE = 22
    SETSEGTRANSLATION = 23
    GETSEGIMAGERAWIMMEDIATE = 24
    GETSEGIMAGERLEIMMEDIATE = 25
    GETEMIMAGERAW = 30
    GETEMIMAGERAWIMMEDIATE = 31
    REFRESHLAYERREGION = 32
    GETPIXELVALUE = 33
    GETSCREENSHOTIMAGERAW = 40
    GETSCREENSHOTIMAGERLE = 41
    SETSEGIMAGERAW = 50
    SETSEGIMAGERLE = 51
    SETSEGMENTBBOX = 60
    GETFIRSTSEGMENTNR = 61
    GETHARDWAREINFO = 62
    ADDSEGMENT = 63
    MOVESEGMENT = 64
    GETDRAWINGPROPERTIES = 65
    SETDRAWINGPROPERTIES = 66
    GETFILLINGPROPERTIES = 67
    SETFILLINGPROPERTIES = 68
    GETANNOLAYERNROFOBJECTS = 70
    GETANNOLAYEROBJECTDATA = 71
    GETANNOLAYEROBJECTNAMES = 72
    ADDNEWANNOOBJECT = 73
    MOVEANNOOBJECT = 74
    REMOVEANNOOBJECT = 75
    SETSELECTEDANNOOBJECTNR = 76
    GETSELECTEDANNOOBJECTNR = 77
    GETAONODEDATA = 78
    GETAONODELABELS = 79
    SETSELECTEDAONODEBYDFSNR = 80
    SETSELECTEDAONODEBYCOORDS = 81
    GETSELECTEDAONODENR = 82
    ADDAONODE = 83
    MOVESELECTEDAONODE = 84
    REMOVESELECTEDAONODE = 85
    SWAPSELECTEDAONODECHILDREN = 86
    MAKESELECTEDAONODEROOT = 87
    SPLITSELECTEDSKELETON = 88
    WELDSKELETONS = 89
    GETANNOOBJECT = 90
    SETANNOOBJECT = 91
    ADDANNOOBJECT = 92
    GETCLOSESTAONODEBYCOORDS = 93
    GETAONODEPARAMS = 94
    SETAONODEPARAMS = 95
    GETAPIVERSION = 100
    GETAPILAYERSENABLED = 101
    SETAPILAYERSENABLED = 102
    GETSELECTEDAPILAYERNR = 103
    SETSELECTEDAPILAYERNR = 104
    GETCURRENTUISTATE = 110
    GETERRORPOPUPSENABLED = 112
    SETERRORPOPUPSENABLED = 113
    SETUIMODE = 114
    SHOWWINDOW = 115
    SET2DVIEWORIENTATION = 116
    GETPOPUPSENABLED = 117
    SETPOPUPSENABLED = 118
    ADDNEWLAYER = 120
    LOADLAYER = 121
    SAVELAYER = 122
    REMOVELAYER = 123
    MOVELAYER = 124
    SETLAYERINFO = 125
    GETMIPMAPSCALEFACTORS = 126
    EXECUTEFILL = 131
    EXECUTELIMITEDFILL = 132
    EXECUTECANVASPAINTSTROKE = 133
    STARTAUTOSKELETONIZATION = 134
    STOPAUTOSKELETONIZATION = 135
    ISAUTOSKELETONIZATIONDONE = 136
    SETTOOLPARAMETERS = 151


#: Commands whose successful reply is raw bytes after the flag, with no tags.
BULK_COMMANDS = frozenset(
    {
        Cmd.GETALLSEGMENTDATA,
        Cmd.GETALLSEGMENTNAMES,
        Cmd.GETSEGIMAGERAW,
        Cmd.GETSEGIMAGERLE,
        Cmd.GETSEGIMAGESURFRLE,
        Cmd.GETSEGIMAGERAWIMMEDIATE,
        Cmd.GETSEGIMAGERLEIMMEDIATE,
        Cmd.GETEMIMAGERAW,
        Cmd.GETEMIMAGERAWIMMEDIATE,
        Cmd.GETSCREENSHOTIMAGERAW,
        Cmd.GETSCREENSHOTIMAGERLE,
        Cmd.GETANNOLAYEROBJECTDATA,
        Cmd.GETANNOLAYEROBJECTNAMES,
        Cmd.GETAONODEDATA,
        Cmd.GETAONODELABELS,
        Cmd.GETANNOOBJECT,
        Cmd.GETAONODEPARAMS,
        Cmd.GETMIPMAPSCALEFACTORS,
    }
)


class ErrorCode(IntEnum):
    """Result codes carried by a failure reply (flag 0, one uint32)."""

    NONE = 0
    UNKNOWN = 1
    UNEXPECTED_DATA = 2
    INVALID_DATA = 3
    READ_FAILURE = 4
    INTERNAL = 5
    VIEW_LOCKED = 6
    SEGMENTATION_LOCKED = 7
    COORDINATES_OUT_OF_BOUNDS = 10
    MIP_OUT_OF_BOUNDS = 11
    DATA_SIZE_OVERFLOW = 12
    DATA_SIZE_MISMATCH = 13
    PARAMETER_OUT_OF_BOUNDS = 14
    DISK_CACHE_FAILED = 15
    OBJECT_OUT_OF_BOUNDS = 20
    NO_ANNOTATION_OR_SEGMENTATION = 21
    RLE_OVERFLOW = 22
    INVALID_ANNOTATION_TYPE = 23
    ANNOTATION_OPERATION_FAILED = 24
    INVALID_LAYER_NUMBER = 30
    INVALID_LAYER_TYPE = 31
    LAYER_OPERATION_FAILED = 32
    TRANSLATION_LENGTH_MISMATCH = 50


ERROR_MEANINGS: dict[int, str] = {
    0: "no error",
    1: "unknown error",
    2: "unexpected data received from VAST (client/API mismatch)",
    3: "VAST received invalid data, command ignored",
    4: "VAST internal data read failure",
    5: "internal VAST error",
    6: "modifying the view is disabled",
    7: "modifying the segmentation is disabled",
    10: "coordinates out of bounds",
    11: "mip level out of bounds",
    12: "data size overflow",
    13: "data size mismatch between coordinates and block size",
    14: "parameter out of bounds",
    15: "could not enable disk cache",
    20: "annotation object or segment number out of bounds",
    21: "no annotation or segmentation available",
    22: "RLE overflow: RLE would be larger than raw, request raw instead",
    23: "invalid annotation object type",
    24: "annotation operation failed",
    30: "invalid layer number",
    31: "invalid layer type",
    32: "layer operation failed",
    50: "source and target arrays of the segment translation differ in length",
}


def error_meaning(code: int) -> str:
    """Human-readable meaning of a VAST error code."""
    return ERROR_MEANINGS.get(int(code), f"undocumented error code {int(code)}")


class ProtocolError(ValueError):
    """Bytes that do not form a valid VAST frame or value sequence."""


class Tag(IntEnum):
    """Type tag in front of every typed value."""

    UINT32 = 1
    DOUBLE = 2
    TEXT = 3
    INT32 = 4
    BLOCK = 5
    UINT64 = 6


_SCALAR = {
    Tag.UINT32: struct.Struct("<I"),
    Tag.DOUBLE: struct.Struct("<d"),
    Tag.INT32: struct.Struct("<i"),
    Tag.UINT64: struct.Struct("<Q"),
}
_U32 = _SCALAR[Tag.UINT32]


@dataclass(frozen=True)
class Value:
    """One tagged value; build with :func:`u32`, :func:`i32`, :func:`f64`, :func:`text`, ..."""

    tag: Tag
    value: int | float | str | bytes

    def encode(self) -> bytes:
        if self.tag is Tag.TEXT:
            raw = str(self.value).encode("latin-1", errors="replace")
            if b"\0" in raw:
                raise ProtocolError("text values cannot contain a NUL character")
            return bytes((Tag.TEXT,)) + raw + b"\0"
        if self.tag is Tag.BLOCK:
            data = bytes(self.value)
            return bytes((Tag.BLOCK,)) + _U32.pack(len(data)) + data
        try:
            return bytes((self.tag,)) + _SCALAR[self.tag].pack(self.value)
        except struct.error as exc:
            raise ProtocolError(f"{self.tag.name} value {self.value!r} out of range") from exc


def u32(v: int) -> Value:
    return Value(Tag.UINT32, int(v))


def i32(v: int) -> Value:
    return Value(Tag.INT32, int(v))


def f64(v: float) -> Value:
    return Value(Tag.DOUBLE, float(v))


def text(v: str) -> Value:
    return Value(Tag.TEXT, v)


def block(v: bytes | bytearray | memoryview) -> Value:
    return Value(Tag.BLOCK, bytes(v))


def u64(v: int) -> Value:
    return Value(Tag.UINT64, int(v))


def encode_values(values: list[Value] | tuple[Value, ...]) -> bytes:
    """Concatenate tagged values."""
    return b"".join(v.encode() for v in values)


def decode_values(buf: bytes | memoryview) -> list[Value]:
    """Parse tagged values in order. Stops at an unknown tag (as VAST's own client does).

    Raises ProtocolError when a value is truncated, so a malformed frame is never half-read.
    """
    mv = memoryview(buf)
    out: list[Value] = []
    pos = 0
    n = len(mv)
    data: bytes | None = None  # bytes view for NUL search, made once (texts come in thousands)
    while pos < n:
        try:
            tag = Tag(mv[pos])
        except ValueError:
            break
        pos += 1
        if tag is Tag.TEXT:
            if data is None:
                data = buf if isinstance(buf, bytes) else bytes(mv)
            end = data.find(b"\0", pos)
            if end < 0:
                raise ProtocolError("text value without NUL terminator")
            out.append(Value(tag, data[pos:end].decode("latin-1")))
            pos = end + 1
        elif tag is Tag.BLOCK:
            if pos + 4 > n:
                raise ProtocolError("truncated data-block length")
            (size,) = _U32.unpack_from(mv, pos)
            pos += 4
            if pos + size > n:
                raise ProtocolError(f"data block says {size} bytes but only {n - pos} follow")
            out.append(Value(tag, bytes(mv[pos : pos + size])))
            pos += size
        else:
            st = _SCALAR[tag]
            if pos + st.size > n:
                raise ProtocolError(f"truncated {tag.name} value")
            (v,) = st.unpack_from(mv, pos)
            out.append(Value(tag, v))
            pos += st.size
    return out


@dataclass
class Grouped:
    """Reply values grouped by type, in arrival order within each type (how VAST clients read)."""

    uints: list[int] = field(default_factory=list)
    doubles: list[float] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    ints: list[int] = field(default_factory=list)
    blocks: list[bytes] = field(default_factory=list)
    uint64s: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, values: list[Value]) -> Grouped:
        g = cls()
        target = {
            Tag.UINT32: g.uints,
            Tag.DOUBLE: g.doubles,
            Tag.TEXT: g.texts,
            Tag.INT32: g.ints,
            Tag.BLOCK: g.blocks,
            Tag.UINT64: g.uint64s,
        }
        for v in values:
            target[v.tag].append(v.value)
        return g

    def counts(self) -> tuple[int, int, int, int, int, int]:
        return (
            len(self.uints),
            len(self.doubles),
            len(self.texts),
            len(self.ints),
            len(self.blocks),
            len(self.uint64s),
        )


def encode_request(cmd: int, params: list[Value] | tuple[Value, ...] = ()) -> bytes:
    """A complete request frame."""
    body = encode_values(params)
    return HEADER.pack(MAGIC, 4 + len(body)) + _U32.pack(int(cmd)) + body


def request_header(cmd: int, params_len: int) -> bytes:
    """Frame header plus command word, for sending a large parameter body without copying it."""
    return HEADER.pack(MAGIC, 4 + params_len) + _U32.pack(int(cmd))


def reply_header(success: bool, payload_len: int) -> bytes:
    """Frame header plus result flag; the payload (typed or bulk) follows separately."""
    return HEADER.pack(MAGIC, 4 + payload_len) + struct.pack("<i", 1 if success else 0)


def encode_reply(success: bool, payload: bytes = b"") -> bytes:
    """A complete reply frame."""
    return reply_header(success, len(payload)) + payload


def encode_error(code: int) -> bytes:
    """A failure reply carrying one error code."""
    return encode_reply(False, u32(code).encode())


def parse_header(head: bytes | memoryview, max_length: int) -> int:
    """Validate a 12-byte frame header and return L (bytes that follow it).

    ``max_length`` bounds L before anyone allocates for it; L must also hold the 4-byte
    command or flag word.
    """
    if len(head) != HEADER_SIZE:
        raise ProtocolError(f"frame header must be {HEADER_SIZE} bytes, got {len(head)}")
    magic, length = HEADER.unpack(head)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {bytes(magic)!r}, expected b'VAST'")
    if length < 4:
        raise ProtocolError(f"frame length {length} is shorter than the 4-byte command/flag word")
    if length > max_length:
        raise ProtocolError(f"frame length {length} exceeds the limit of {max_length} bytes")
    return length


def split_request(body: bytes | memoryview) -> tuple[int, list[Value]]:
    """Split the L bytes after a request header into (command number, parameters)."""
    if len(body) < 4:
        raise ProtocolError("request body shorter than the command word")
    (cmd,) = _U32.unpack_from(body, 0)
    return cmd, decode_values(memoryview(body)[4:])


def split_reply(body: bytes | memoryview) -> tuple[bool, memoryview]:
    """Split the L bytes after a reply header into (success flag, payload)."""
    if len(body) < 4:
        raise ProtocolError("reply body shorter than the flag word")
    (flag,) = struct.unpack_from("<i", body, 0)
    return flag == 1, memoryview(body)[4:]


def error_code_of(payload: bytes | memoryview) -> int:
    """Error code of a failure payload: its single uint32, else 1 (unknown), like VAST's client."""
    try:
        g = Grouped.of(decode_values(payload))
    except ProtocolError:
        return int(ErrorCode.UNKNOWN)
    if g.counts() == (1, 0, 0, 0, 0, 0):
        return g.uints[0]
    return int(ErrorCode.UNKNOWN)


def pack_box(mip: int, box: tuple[int, int, int, int, int, int]) -> list[Value]:
    """mip then the inclusive ``minx,maxx,miny,maxy,minz,maxz`` box, as uint32 values."""
    return [u32(mip)] + [u32(v) for v in box]
