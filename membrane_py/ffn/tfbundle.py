"""A reader for TensorFlow's checkpoint "tensor bundle" files, without TensorFlow.

A TF1 checkpoint ``PREFIX`` is ``PREFIX.index`` plus ``PREFIX.data-00000-of-0000N``. The
index is a LevelDB-style sorted string table (SSTable):

- the last 48 bytes are the *footer*: two *block handles* (varint64 offset, varint64 size;
  the metaindex block, then the index block), zero padding to 40 bytes, and the 8-byte
  little-endian magic ``0xdb4775248b80fb57``;
- every block is followed by a 5-byte trailer: a compression byte (0 = none; snappy is
  refused here) and the *masked* CRC-32C of the block and that byte;
- a block holds entries ``varint shared, varint non_shared, varint value_len,
  key[shared:] bytes, value bytes`` (keys are prefix-compressed against the previous key),
  followed by ``uint32`` restart offsets and their ``uint32`` count;
- the index block maps the last key of each data block to that block's handle; data blocks
  map tensor names to serialised ``BundleEntryProto`` messages (the empty key holds the
  bundle header, which is skipped).

A ``BundleEntryProto`` gives the dtype (field 1), shape (field 2: ``TensorShapeProto`` with
repeated ``dim`` messages whose field 1 is the size), shard (3), byte offset (4) and size (5)
in the data file, and the masked CRC-32C of the tensor bytes (6). Partitioned ("sliced")
variables (field 7) are refused. Every length and offset is checked against the file before
it is used, so a damaged or hostile file raises :class:`BundleError` instead of reading
out of bounds or allocating without limit.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
TRAILER_SIZE = 5
MAX_INDEX_BYTES = 64 << 20  # an index is a few kB per thousand tensors
MAX_TENSOR_BYTES = 4 << 30

#: TensorFlow DataType enum value -> numpy dtype (little-endian), the types weights use
DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1", 9: "<i8", 10: "?",
          17: "<u2", 19: "<f2", 22: "<u4", 23: "<u8"}


class BundleError(ValueError):
    """A checkpoint bundle that cannot be read (damaged, truncated, or unsupported)."""


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives: dtype, shape, data shard, byte offset and size, checksum."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc32c: int | None


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``; the C implementation when google-crc32c (a zarr
    dependency) is installed, else a table-driven one."""
    try:
        import google_crc32c
    except ImportError:
        crc = 0xFFFFFFFF
        for b in data:
            crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
        return crc ^ 0xFFFFFFFF
    return int(google_crc32c.value(bytes(data)))


def unmask(masked: int) -> int:
    """Undo LevelDB's CRC masking (rotate right by 15 after subtracting the delta)."""
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """A base-128 varint (at most 10 bytes) at ``pos``; returns (value, next position)."""
    value = shift = 0
    for i in range(10):
        if pos + i >= end:
            break
        b = buf[pos + i]
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos + i + 1
        shift += 7
    raise BundleError(f"bad varint at byte {pos}")


def _handle(buf: bytes, pos: int, end: int) -> tuple[tuple[int, int], int]:
    offset, pos = read_varint(buf, pos, end)
    size, pos = read_varint(buf, pos, end)
    return (offset, size), pos


def _block(buf: bytes, handle: tuple[int, int]) -> bytes:
    """The contents of the block at ``handle``, trailer checked (compression, CRC)."""
    offset, size = handle
    if offset + size + TRAILER_SIZE > len(buf) - FOOTER_SIZE:
        raise BundleError(f"block at {offset} (+{size}) lies outside the index file")
    kind = buf[offset + size]
    if kind != 0:
        raise BundleError(f"block at {offset} is compressed (type {kind}); only uncompressed "
                          "index blocks are supported")
    (stored,) = struct.unpack_from("<I", buf, offset + size + 1)
    if unmask(stored) != crc32c(buf[offset:offset + size + 1]):
        raise BundleError(f"block at {offset} fails its CRC check: the index is damaged")
    return buf[offset:offset + size]


def block_entries(block: bytes) -> list[tuple[bytes, bytes]]:
    """The (key, value) pairs of one block, keys restored from their shared prefixes."""
    if len(block) < 4:
        raise BundleError("index block too short")
    (n_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 - 4 * n_restarts
    if end < 0:
        raise BundleError("index block restart array runs past the block")
    entries, key, pos = [], b"", 0
    while pos < end:
        shared, pos = read_varint(block, pos, end)
        non_shared, pos = read_varint(block, pos, end)
        value_len, pos = read_varint(block, pos, end)
        if shared > len(key) or pos + non_shared + value_len > end:
            raise BundleError(f"index entry at byte {pos} runs past its block")
        key = key[:shared] + block[pos:pos + non_shared]
        pos += non_shared
        entries.append((key, block[pos:pos + value_len]))
        pos += value_len
    return entries


def _fields(msg: bytes) -> list[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of a protobuf message: varints as ints, fixed32 /
    fixed64 as ints, length-delimited as bytes."""
    out, pos, end = [], 0, len(msg)
    while pos < end:
        tag, pos = read_varint(msg, pos, end)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = read_varint(msg, pos, end)
        elif wire == 1 and pos + 8 <= end:
            (value,), pos = struct.unpack_from("<Q", msg, pos), pos + 8
        elif wire == 5 and pos + 4 <= end:
            (value,), pos = struct.unpack_from("<I", msg, pos), pos + 4
        elif wire == 2:
            n, pos = read_varint(msg, pos, end)
            if pos + n > end:
                raise BundleError("protobuf field runs past its message")
            value, pos = msg[pos:pos + n], pos + n
        else:
            raise BundleError(f"unsupported protobuf wire type {wire}")
        out.append((number, wire, value))
    return out


def parse_entry(name: str, msg: bytes) -> TensorEntry:
    """A ``BundleEntryProto`` as a :class:`TensorEntry`."""
    dtype, shape, shard, offset, size, crc = 0, [], 0, 0, 0, None
    for number, _, value in _fields(msg):
        if number == 1:
            dtype = value
        elif number == 2:
            for n, _, dim in _fields(value):
                if n == 2:  # repeated Dim { int64 size = 1; string name = 2; }
                    sizes = [v for k, _, v in _fields(dim) if k == 1]
                    shape.append(sizes[0] if sizes else 0)
        elif number == 3:
            shard = value
        elif number == 4:
            offset = value
        elif number == 5:
            size = value
        elif number == 6:
            crc = value
        elif number == 7:
            raise BundleError(f"tensor {name!r} is partitioned into slices; not supported")
    if dtype not in DTYPES:
        raise BundleError(f"tensor {name!r} has TensorFlow dtype {dtype}, which this reader "
                          "does not support")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if size != count * np.dtype(DTYPES[dtype]).itemsize or size > MAX_TENSOR_BYTES:
        raise BundleError(f"tensor {name!r}: {size} bytes do not fit shape {shape} of "
                          f"{DTYPES[dtype]}")
    return TensorEntry(name, DTYPES[dtype], tuple(shape), shard, offset, size, crc)


def _prefix(path: str | Path) -> Path:
    """The checkpoint prefix of ``path`` (given as the prefix, the .index or a .data file)."""
    path = Path(path)
    name = path.name
    if name.endswith(".index"):
        return path.with_name(name[:-len(".index")])
    if ".data-" in name:
        return path.with_name(name.split(".data-")[0])
    return path


def read_index(path: str | Path) -> dict[str, TensorEntry]:
    """Every tensor entry of the checkpoint at ``path`` (prefix, ``.index`` or data file)."""
    index = _prefix(path).with_name(_prefix(path).name + ".index")
    if not index.is_file():
        raise FileNotFoundError(f"checkpoint index {index} does not exist: pass the checkpoint "
                                "prefix (e.g. model.ckpt-27465036) or its .index file")
    if index.stat().st_size > MAX_INDEX_BYTES:
        raise BundleError(f"{index} is larger than {MAX_INDEX_BYTES} bytes: not a checkpoint "
                          "index")
    buf = index.read_bytes()
    if len(buf) < FOOTER_SIZE:
        raise BundleError(f"{index} is too short to be a checkpoint index")
    (magic,) = struct.unpack_from("<Q", buf, len(buf) - 8)
    if magic != MAGIC:
        raise BundleError(f"{index} is not a TensorFlow checkpoint index (bad magic number)")
    footer = len(buf) - FOOTER_SIZE
    _, pos = _handle(buf, footer, len(buf) - 8)  # the metaindex block is unused by bundles
    index_handle, _ = _handle(buf, pos, len(buf) - 8)
    entries = {}
    for _, value in block_entries(_block(buf, index_handle)):
        data_handle, _ = _handle(value, 0, len(value))
        for key, msg in block_entries(_block(buf, data_handle)):
            if key:  # the empty key is the BundleHeaderProto
                name = key.decode("utf-8")
                entries[name] = parse_entry(name, msg)
    return entries


def read_tensors(path: str | Path, names: list[str] | None = None,
                 check_crc: bool = True) -> dict[str, np.ndarray]:
    """The tensors ``names`` (default all) of the checkpoint at ``path`` as numpy arrays,
    each checked against the data file's size and, with ``check_crc``, its checksum."""
    prefix = _prefix(path)
    entries = read_index(prefix)
    missing = [n for n in names or [] if n not in entries]
    if missing:
        raise BundleError(f"checkpoint {prefix} has no tensor {missing[0]!r}")
    shards: dict[int, Path] = {}
    out = {}
    for name in names or sorted(entries):
        e = entries[name]
        if e.shard not in shards:
            files = sorted(prefix.parent.glob(f"{prefix.name}.data-{e.shard:05d}-of-*"))
            if not files:
                raise FileNotFoundError(f"checkpoint data shard {e.shard} of {prefix} is "
                                        "missing (expected PREFIX.data-NNNNN-of-NNNNN)")
            shards[e.shard] = files[0]
        shard = shards[e.shard]
        if e.offset + e.size > shard.stat().st_size:
            raise BundleError(f"tensor {name!r} lies outside the data file (truncated copy?)")
        with open(shard, "rb") as f:  # only this tensor's bytes, never the whole shard
            f.seek(e.offset)
            raw = f.read(e.size)
        if check_crc and e.crc32c is not None and unmask(e.crc32c) != crc32c(raw):
            raise BundleError(f"tensor {name!r} fails its CRC check: the checkpoint is damaged")
        out[name] = np.frombuffer(raw, dtype=e.dtype).reshape(e.shape).copy()
    return out
