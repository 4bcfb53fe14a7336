"""A client for VAST Lite's Remote Control API (and for the bundled mock server).

One TCP connection, strictly one request and one reply at a time; a lock makes one client
object safe to share between threads. Image replies are received with ``recv_into`` straight
into a preallocated numpy array, and every reply length is bounded before anything is
allocated for it. Boxes are :class:`~membrane_py.geometry.Box` (half-open, at the requested
mip); arrays come back (z, y, x[, c]); points (view, nodes, anchors) are (x, y, z) at mip 0.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time
from collections.abc import Sequence

import numpy as np

from membrane_py.geometry import Box
from membrane_py.vastapi import protocol as P
from membrane_py.vastapi.records import (
    ANNO_RECORD,
    MIP_FACTORS_RECORD,
    NODE_RECORD,
    SEGMENT_RECORD,
    AnnoObject,
    LayerInfo,
    RecordError,
    SegmentData,
    SelectedLayers,
    SkeletonNode,
    VastInfo,
    decode_counted,
    decode_names,
)
from membrane_py.vastapi.rle import rle_decode, rle_encode

__all__ = ["EM_DTYPES", "SEGMENT_RECORD", "AnnoObject", "LayerInfo", "SegmentData",
           "SelectedLayers", "SkeletonNode", "VastClient", "VastError", "VastInfo", "pack_color"]

#: Largest failure reply (one error code, maybe a message) accepted for a bulk command.
MAX_ERROR_REPLY = 1 << 16
#: Largest typed (tagged values) reply; the biggest real ones are a few names or numbers.
MAX_TYPED_REPLY = 1 << 20
#: Seconds a request and its whole reply may take when no timeout is given.
DEFAULT_TIMEOUT = 30.0
#: First allocation for a reply of unknown content; it doubles as bytes arrive.
_FIRST_CHUNK = 1 << 16
#: Bytes per pixel an EM layer may have, with the numpy type of one pixel.
EM_DTYPES = {1: np.uint8, 3: np.uint8, 4: np.uint32, 8: np.uint64}

#: Commands that only read VAST's state, so resending one after a broken connection is safe.
READ_ONLY = frozenset(c for c in P.Cmd if c.name.startswith("GET"))


class VastTimeoutError(ConnectionError, TimeoutError):
    """VAST did not finish a reply in time; the connection was dropped.

    A ConnectionError too, so callers that handle a lost VAST handle this the same way.
    """


class VastError(Exception):
    """VAST answered a request with a failure code (or a reply the client cannot accept)."""

    def __init__(self, code: int, command: str, detail: str = "") -> None:
        self.code = int(code)
        self.meaning = P.error_meaning(code)
        self.command = command
        msg = f"VAST {command} failed: error {self.code} ({self.meaning})"
        super().__init__(f"{msg}: {detail}" if detail else msg)


def pack_color(r: int, g: int, b: int, pattern: int = 0) -> int:
    """VAST's packed colour word: (r << 24) | (g << 16) | (b << 8) | pattern."""
    return ((r & 255) << 24) | ((g & 255) << 16) | ((b & 255) << 8) | (pattern & 255)


class VastClient:
    """Talks to VAST (Window > Remote Control API Server) or to ``mock_vast_server``.

    Use as a context manager or call :meth:`connect` / :meth:`close`. A broken connection is
    re-opened once and the request resent only for read-only (GET...) commands; a write that
    may have reached VAST is never silently repeated. ``timeout`` bounds sending a request
    plus receiving its whole reply (default: $MEMBRANE_VAST_TIMEOUT, else 30 s), so a VAST
    that trickles bytes cannot hold a call forever; past it :class:`VastTimeoutError`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = P.DEFAULT_PORT,
        timeout: float | None = None,
        connect_timeout: float = 2.0,
        max_reply_bytes: int = 2**31,
    ) -> None:
        if timeout is None:
            timeout = float(os.environ.get("MEMBRANE_VAST_TIMEOUT", DEFAULT_TIMEOUT))
        self.host, self.port = host, int(port)
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self._deadline = 0.0
        self.max_reply_bytes = int(max_reply_bytes)
        self._sock: socket.socket | None = None
        self._lock = threading.RLock()
        self._small = bytearray(P.HEADER_SIZE + 4)

    # -- connection ---------------------------------------------------------------------------

    def connect(self) -> VastClient:
        with self._lock:
            if self._sock is not None:
                return self
            try:
                sock = socket.create_connection((self.host, self.port), self.connect_timeout)
            except (ConnectionRefusedError, TimeoutError, socket.gaierror, OSError) as exc:
                raise ConnectionError(
                    f"cannot connect to VAST at {self.host}:{self.port} ({exc}); is VAST running "
                    f"with Window > Remote Control API Server enabled, on port {self.port}?"
                ) from exc
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(self.timeout)
            self._sock = sock
            return self

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                try:
                    self._sock.close()
                finally:
                    self._sock = None

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def __enter__(self) -> VastClient:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "connected" if self.connected else "closed"
        return f"VastClient({self.host}:{self.port}, {state})"

    # -- one request, one reply ----------------------------------------------------------------

    def _request(self, cmd: P.Cmd, params: Sequence[P.Value] = (), *,
                 blob: memoryview | None = None, expect: Sequence[int] | None = None,
                 out: np.ndarray | None = None,
                 max_bytes: int | None = None) -> memoryview | np.ndarray:
        """Send one request and return its successful payload (raises VastError on failure).

        ``blob`` is sent as a trailing data block without copying. For bulk image commands
        ``expect`` lists the allowed payload sizes (``out``, when given, receives the one
        that matches its size); other payloads are bounded by ``max_bytes`` (default: a
        typed reply, :data:`MAX_TYPED_REPLY`).
        """
        with self._lock:
            for attempt in (0, 1):
                self._ensure_fresh_connection()
                self._deadline = time.monotonic() + self.timeout
                try:
                    self._send(cmd, params, blob)
                    return self._receive(cmd, expect, out, max_bytes)
                except TimeoutError as exc:
                    self.close()  # the stream position is unknown now
                    raise VastTimeoutError(
                        f"VAST at {self.host}:{self.port} did not answer {cmd.name} within "
                        f"{self.timeout:g} s (the timeout covers the whole reply)") from exc
                except (ConnectionError, OSError) as exc:
                    self.close()
                    if cmd not in READ_ONLY or attempt:
                        raise ConnectionError(
                            f"connection to VAST at {self.host}:{self.port} broke during "
                            f"{cmd.name} ({exc})"
                            + ("" if cmd in READ_ONLY else
                               "; not resent because the command changes VAST's state")
                        ) from exc
        raise AssertionError("unreachable")

    def _ensure_fresh_connection(self) -> None:
        """Connect if needed; drop a connection the peer has closed, before sending on it."""
        sock = self._sock
        if sock is not None and select.select([sock], [], [], 0)[0]:
            self.close()  # nothing is outstanding, so "readable" means EOF, a reset or junk
        self.connect()

    def _time_left(self) -> float:
        """Seconds left of this request's timeout, applied to the socket; TimeoutError at 0."""
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request deadline passed")
        assert self._sock is not None
        self._sock.settimeout(left)
        return left

    def _send(self, cmd: P.Cmd, params: Sequence[P.Value], blob: memoryview | None) -> None:
        body = P.encode_values(params)
        self._time_left()
        assert self._sock is not None
        if blob is None:
            self._sock.sendall(P.request_header(cmd, len(body)) + body)
            return
        tail = bytes((P.Tag.BLOCK,)) + struct.pack("<I", blob.nbytes)
        self._sock.sendall(P.request_header(cmd, len(body) + len(tail) + blob.nbytes) + body + tail)
        self._time_left()
        self._sock.sendall(blob)

    def _recv_into(self, view: memoryview) -> None:
        """Fill ``view`` before the request's deadline."""
        assert self._sock is not None
        got, n = 0, view.nbytes
        while got < n:
            self._time_left()
            k = self._sock.recv_into(view[got:], n - got)
            if k == 0:
                raise ConnectionResetError("VAST closed the connection in the middle of a reply")
            got += k

    def _recv_payload(self, n: int) -> bytearray:
        """``n`` bytes into a buffer that grows (doubling) only as they arrive, so a reply
        header that lies about its length costs little."""
        payload = bytearray(min(n, _FIRST_CHUNK))
        got = 0
        while True:
            self._recv_into(memoryview(payload)[got:])
            got = len(payload)
            if got == n:
                return payload
            payload.extend(bytes(min(n, 2 * got) - got))

    def _reject(self, cmd: P.Cmd, detail: str) -> VastError:
        self.close()  # the rest of the reply is unread, so this stream cannot be reused
        return VastError(P.ErrorCode.UNEXPECTED_DATA, cmd.name, detail)

    def _receive(self, cmd: P.Cmd, expect: Sequence[int] | None, out: np.ndarray | None,
                 max_bytes: int | None) -> memoryview | np.ndarray:
        head = memoryview(self._small)
        self._recv_into(head)
        if expect is not None:
            limit = max(expect) + 4
        else:
            limit = (MAX_TYPED_REPLY if max_bytes is None else max_bytes) + 4
        limit = max(min(limit, self.max_reply_bytes), MAX_ERROR_REPLY)
        try:
            length = P.parse_header(head[: P.HEADER_SIZE], limit)
        except P.ProtocolError as exc:
            raise self._reject(cmd, str(exc)) from exc
        (flag,) = struct.unpack_from("<i", head, P.HEADER_SIZE)
        n = length - 4
        if flag != 1:
            if n > MAX_ERROR_REPLY:
                raise self._reject(cmd, f"failure reply of {n} bytes")
            raise VastError(P.error_code_of(self._recv_payload(n)), cmd.name)
        if expect is not None:
            if n not in expect:
                raise self._reject(cmd, f"reply has {n} bytes, expected one of {sorted(expect)}")
            buf = out if out is not None and out.nbytes == n else np.empty(n, np.uint8)
            self._recv_into(memoryview(buf).cast("B"))
            return buf
        return memoryview(self._recv_payload(n))

    def _typed(self, cmd: P.Cmd, params: Sequence[P.Value] = (),
               counts: tuple[int, int, int, int] | None = None) -> P.Grouped:
        """A typed reply grouped by type; ``counts`` = (uint32, double, text, int32) required."""
        payload = self._request(cmd, params)
        try:
            g = P.Grouped.of(P.decode_values(payload))
        except P.ProtocolError as exc:
            raise VastError(P.ErrorCode.UNEXPECTED_DATA, cmd.name, str(exc)) from exc
        got = (len(g.uints), len(g.doubles), len(g.texts), len(g.ints))
        if counts is not None and got != counts:
            raise VastError(P.ErrorCode.UNEXPECTED_DATA, cmd.name,
                            f"got (uint32, double, text, int32) counts {got}, expected {counts}")
        return g

    def _one_uint(self, cmd: P.Cmd, params: Sequence[P.Value] = ()) -> int:
        return self._typed(cmd, params, (1, 0, 0, 0)).uints[0]

    def _list(self, cmd: P.Cmd, params: Sequence[P.Value], record: np.dtype) -> np.ndarray:
        """Bulk ``u32 N`` then N fixed-size records (layouts in :mod:`.records`)."""
        try:
            return decode_counted(self._request(cmd, params, max_bytes=self.max_reply_bytes),
                                  record)
        except RecordError as exc:
            raise VastError(P.ErrorCode.UNEXPECTED_DATA, cmd.name, str(exc)) from exc

    def _names(self, cmd: P.Cmd) -> list[str]:
        """Bulk ``u32 N`` then N NUL-terminated strings."""
        try:
            return decode_names(self._request(cmd, max_bytes=self.max_reply_bytes))
        except RecordError as exc:
            raise VastError(P.ErrorCode.UNEXPECTED_DATA, cmd.name, str(exc)) from exc

    # -- info and layers -----------------------------------------------------------------------

    def get_info(self) -> VastInfo:
        return VastInfo.from_grouped(self._typed(P.Cmd.GETINFO, (), VastInfo.COUNTS))

    def get_api_version(self) -> int:
        return self._one_uint(P.Cmd.GETAPIVERSION)

    def get_number_of_layers(self) -> int:
        return self._one_uint(P.Cmd.GETNROFLAYERS)

    def get_layer_info(self, nr: int) -> LayerInfo:
        return LayerInfo.from_grouped(
            self._typed(P.Cmd.GETLAYERINFO, [P.u32(nr)], LayerInfo.COUNTS))

    def get_layer_names(self) -> list[str]:
        """Names of all layers, index = layer number."""
        return [self.get_layer_info(i).name for i in range(self.get_number_of_layers())]

    def _selected(self, cmd: P.Cmd) -> SelectedLayers:
        try:
            return SelectedLayers.from_grouped(self._typed(cmd))
        except RecordError as exc:
            raise VastError(P.ErrorCode.UNEXPECTED_DATA, cmd.name, str(exc)) from exc

    def get_selected_layers(self) -> SelectedLayers:
        return self._selected(P.Cmd.GETSELECTEDLAYERNR)

    def set_selected_layer(self, nr: int) -> None:
        self._request(P.Cmd.SETSELECTEDLAYERNR, [P.i32(nr)])

    def get_api_layers_enabled(self) -> bool:
        return bool(self._one_uint(P.Cmd.GETAPILAYERSENABLED))

    def set_api_layers_enabled(self, enabled: bool = True) -> None:
        self._request(P.Cmd.SETAPILAYERSENABLED, [P.u32(int(enabled))])

    def get_selected_api_layers(self) -> SelectedLayers:
        return self._selected(P.Cmd.GETSELECTEDAPILAYERNR)

    def set_selected_api_layer(self, nr: int) -> None:
        self._request(P.Cmd.SETSELECTEDAPILAYERNR, [P.i32(nr)])

    def add_new_layer(self, type: int, name: str, ref: int = -1) -> int:
        """Type 1 annotation, 2 segmentation (XY mips), 3 tool, 4 segmentation (XYZ mips)."""
        return self._one_uint(P.Cmd.ADDNEWLAYER, [P.i32(type), P.i32(ref), P.text(name)])

    def load_layer(self, path: str, ref: int = -1) -> int:
        """Open a layer file (e.g. a .vsvi) in VAST; returns its layer number."""
        return self._one_uint(P.Cmd.LOADLAYER, [P.i32(ref), P.text(str(path))])

    def save_layer(self, nr: int, path: str = "", force: bool = True, subformat: int = 0) -> None:
        self._request(P.Cmd.SAVELAYER,
                      [P.u32(nr), P.u32(int(force)), P.u32(subformat), P.text(str(path))])

    def remove_layer(self, nr: int, force: bool = True) -> None:
        self._request(P.Cmd.REMOVELAYER, [P.u32(nr), P.u32(int(force))])

    def refresh_layer_region(self, layer: int, box: Box) -> None:
        """Make VAST reread ``box`` (mip-0 voxels) of an image layer from its files, so tiles
        written after VAST first showed the region appear (REFRESHLAYERREGION)."""
        self._request(P.Cmd.REFRESHLAYERREGION, [P.u32(layer)] + [P.u32(v) for v in box.to_vast()])

    def get_mipmap_scale_factors(self, layer: int) -> np.ndarray:
        """(n_mips, 3) uint32 rows of (fx, fy, fz); row m is mip m."""
        rows = self._list(P.Cmd.GETMIPMAPSCALEFACTORS, [P.u32(layer)], MIP_FACTORS_RECORD)
        return rows["factors"].astype(np.uint32)

    # -- voxels ---------------------------------------------------------------------------------

    def get_em_image(self, layer: int, box: Box, mip: int = 0,
                     out: np.ndarray | None = None) -> np.ndarray:
        """EM voxels of ``box`` at ``mip``: uint8 (z,y,x), RGB uint8 (z,y,x,3), uint32 or uint64.

        ``out`` (C-contiguous, of the layer's size and type) is filled in place and returned,
        so a reader can reuse one buffer per chunk.
        """
        n = box.size
        if out is not None:
            if not out.flags.c_contiguous or out.shape[:3] != box.shape:
                raise ValueError(f"out must be C-contiguous and shaped {box.shape}[+(3,)]")
            expect = [out.nbytes]
        else:
            expect = [n * k for k in EM_DTYPES]
        buf = self._request(P.Cmd.GETEMIMAGERAW, [P.u32(layer)] + P.pack_box(mip, box.to_vast()),
                            expect=expect, out=out)
        bpp = buf.nbytes // n
        img = out if out is not None else buf.view(EM_DTYPES[bpp]).reshape(
            (*box.shape, 3) if bpp == 3 else box.shape)
        if bpp == 3:
            img[..., [0, 2]] = img[..., [2, 0]]  # VAST sends B, G, R
        return img

    def get_seg_image(self, box: Box, mip: int = 0) -> np.ndarray:
        """Segmentation ids (uint16, z,y,x) of the selected (API) segmentation layer, raw."""
        buf = self._request(P.Cmd.GETSEGIMAGERAW, P.pack_box(mip, box.to_vast()),
                            expect=[2 * box.size])
        return buf.view("<u2").reshape(box.shape)

    def get_seg_image_rle(self, box: Box, mip: int = 0) -> np.ndarray:
        """As :meth:`get_seg_image`, transferred run-length coded (small for sparse labels).

        When VAST refuses because the RLE would be larger (error 22), reads raw instead.
        """
        try:
            payload = self._request(P.Cmd.GETSEGIMAGERLE, P.pack_box(mip, box.to_vast()),
                                    max_bytes=4 * box.size)
        except VastError as exc:
            if exc.code != P.ErrorCode.RLE_OVERFLOW:
                raise
            return self.get_seg_image(box, mip)
        try:
            return rle_decode(bytes(payload), box.size).reshape(box.shape)
        except ValueError as exc:
            raise VastError(P.ErrorCode.UNEXPECTED_DATA, "GETSEGIMAGERLE", str(exc)) from exc

    def set_seg_image(self, box: Box, labels: np.ndarray, mip: int = 0,
                      method: str = "auto") -> str:
        """Write uint16 ids into ``box`` of the selected (API) segmentation layer.

        ``method``: "raw", "rle", or "auto" (RLE when smaller than raw). If VAST refuses RLE
        with error 22 the raw form is sent instead. Returns the method used.
        """
        if labels.shape != box.shape:
            raise ValueError(f"labels shaped {labels.shape} do not match box {box.shape}")
        if labels.dtype != np.uint16:
            if labels.size and (labels.min() < 0 or labels.max() > 0xFFFF):
                raise ValueError("VAST segment ids are 0..65535; remap larger ids before writing")
            labels = labels.astype(np.uint16)
        raw = np.ascontiguousarray(labels, dtype="<u2")
        params = P.pack_box(mip, box.to_vast())
        if method not in ("auto", "rle", "raw"):
            raise ValueError(f"method must be 'auto', 'rle' or 'raw', not {method!r}")
        if method != "raw":
            pairs = rle_encode(raw).astype("<u2", copy=False)
            if method == "rle" or pairs.nbytes < raw.nbytes:
                try:
                    self._request(P.Cmd.SETSEGIMAGERLE, params, blob=memoryview(pairs).cast("B"))
                    return "rle"
                except VastError as exc:
                    if exc.code != P.ErrorCode.RLE_OVERFLOW:
                        raise
        self._request(P.Cmd.SETSEGIMAGERAW, params, blob=memoryview(raw).cast("B"))
        return "raw"

    # -- segments -------------------------------------------------------------------------------

    def get_number_of_segments(self) -> int:
        return self._one_uint(P.Cmd.GETNUMBEROFSEGMENTS)

    def get_segment_data(self, id: int) -> SegmentData:
        return SegmentData.from_grouped(
            self._typed(P.Cmd.GETSEGMENTDATA, [P.u32(id)], SegmentData.COUNTS))

    def get_all_segment_data(self) -> np.ndarray:
        """Structured array (dtype SEGMENT_RECORD); record k is segment k, 0 = background."""
        return self._list(P.Cmd.GETALLSEGMENTDATA, (), SEGMENT_RECORD)

    def get_all_segment_names(self) -> list[str]:
        return self._names(P.Cmd.GETALLSEGMENTNAMES)

    def add_segment(self, name: str, ref: int = 0, as_child: bool = False) -> int:
        return self._one_uint(P.Cmd.ADDSEGMENT, [P.u32(ref), P.u32(int(as_child)), P.text(name)])

    def set_segment_name(self, id: int, name: str) -> None:
        self._request(P.Cmd.SETSEGMENTNAME, [P.u32(id), P.text(name)])

    def set_segment_color(self, id: int, col1: int, col2: int) -> None:
        self._request(P.Cmd.SETSEGMENTCOLOR, [P.u32(id), P.u32(col1), P.u32(col2)])

    def set_segment_color_rgb(self, id: int, rgb: tuple[int, int, int],
                              rgb2: tuple[int, int, int] | None = None, pattern: int = 0) -> None:
        """Set a segment's colours from (r, g, b); the secondary colour defaults to the primary."""
        self.set_segment_color(id, pack_color(*rgb, pattern), pack_color(*(rgb2 or rgb), pattern))

    def set_selected_segment(self, nr: int) -> None:
        self._request(P.Cmd.SETSELECTEDSEGMENTNR, [P.i32(nr)])

    def get_selected_segment(self) -> int:
        return self._one_uint(P.Cmd.GETSELECTEDSEGMENTNR)

    # -- view -----------------------------------------------------------------------------------

    def get_view_coordinates(self) -> tuple[int, int, int]:
        """(x, y, z) at mip 0."""
        return tuple(self._typed(P.Cmd.GETVIEWCOORDINATES, (), (0, 0, 0, 3)).ints)

    def set_view_coordinates(self, x: int, y: int, z: int) -> None:
        self._request(P.Cmd.SETVIEWCOORDINATES, [P.u32(x), P.u32(y), P.u32(z)])

    def get_view_zoom(self) -> int:
        return self._typed(P.Cmd.GETVIEWZOOM, (), (0, 0, 0, 1)).ints[0]

    def set_view_zoom(self, zoom: int) -> None:
        self._request(P.Cmd.SETVIEWZOOM, [P.i32(zoom)])

    # -- annotation layer (acts on the selected API annotation layer) --------------------------

    def get_anno_layer_number_of_objects(self) -> tuple[int, int]:
        """(number of objects, first object number)."""
        u = self._typed(P.Cmd.GETANNOLAYERNROFOBJECTS, (), (2, 0, 0, 0)).uints
        return u[0], u[1]

    def get_anno_object_data(self) -> list[AnnoObject]:
        """Objects 1..N of the selected annotation layer."""
        recs = self._list(P.Cmd.GETANNOLAYEROBJECTDATA, (), ANNO_RECORD)
        return [AnnoObject.from_record(k + 1, r) for k, r in enumerate(recs)]

    def get_anno_object_names(self) -> list[str]:
        return self._names(P.Cmd.GETANNOLAYEROBJECTNAMES)

    def add_new_anno_object(self, name: str, type: int = 1, ref: int = 0,
                            as_child: bool = False) -> int:
        """A new annotation object (type 1 skeleton, 0 folder) next to (or, ``as_child``,
        inside) object ``ref`` (0: at the top level); returns its id (ADDNEWANNOOBJECT)."""
        return self._one_uint(P.Cmd.ADDNEWANNOOBJECT,
                              [P.u32(ref), P.u32(int(as_child)), P.u32(type), P.text(name)])

    def set_selected_anno_object(self, id: int) -> None:
        self._request(P.Cmd.SETSELECTEDANNOOBJECTNR, [P.u32(id)])

    def get_selected_anno_object(self) -> int:
        return self._one_uint(P.Cmd.GETSELECTEDANNOOBJECTNR)

    def get_ao_node_data(self) -> list[SkeletonNode]:
        """Nodes of the selected skeleton in depth-first order (coordinates at mip 0)."""
        recs = self._list(P.Cmd.GETAONODEDATA, (), NODE_RECORD)
        return [SkeletonNode.from_record(k, r) for k, r in enumerate(recs)]

    def add_ao_node(self, x: int, y: int, z: int) -> None:
        """Add a node (mip-0 coordinates) to the selected skeleton."""
        self._request(P.Cmd.ADDAONODE, [P.u32(x), P.u32(y), P.u32(z)])

    def get_selected_ao_node(self) -> int:
        return self._one_uint(P.Cmd.GETSELECTEDAONODENR)
