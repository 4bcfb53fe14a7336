"""One small handler per VAST command, over a :class:`~mock_vast_server.state.MockVast`.

A handler gets its parameters already checked against a signature string (``u`` uint32,
``i`` int32, ``d`` double, ``t`` text, ``b`` data block; a wrong count or tag is error 3) and
returns tagged values (typed reply) or :class:`Bulk` (raw bytes after the flag). Failures
raise :class:`~mock_vast_server.state.StateError` with the VAST error code.

Choices where the reference leaves VAST's behaviour open (ours, documented here):

* ``GETAPIVERSION`` answers :data:`API_VERSION` = 1.
* ``GETNUMBEROFSEGMENTS`` counts the background, so it equals N of ``GETALLSEGMENTDATA``.
* ``GETANNOLAYEROBJECTDATA`` / ``GETANNOLAYEROBJECTNAMES`` list objects 1..N (no row 0).
* ``GETAONODEDATA`` words: w0 flags (bit0 selected), w1-w3 x,y,z (mip 0), w4 parent DFS nr,
  w5 first child DFS nr, w6 next sibling DFS nr (0xFFFFFFFF = none), w7 0, w8-w9 radius
  (double), w10-w11 0. The reference only infers w4-w6; this layout is our choice.
* ``GETSELECTEDAONODENR`` answers 0xFFFFFFFF when no node is selected.
* ``SAVELAYER`` flushes the layer into the state dir (which already holds every change);
  the file name argument is logged and otherwise ignored.
* Setters reply with an empty payload; unknown or unimplemented commands get error 1.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from membrane_py.vastapi.protocol import Cmd, Tag, Value, f64, i32, text, u32, u64
from membrane_py.vastapi.records import (
    ANNO_RECORD,
    MIP_FACTORS_RECORD,
    NODE_RECORD,
    NONE32,
    SEGMENT_RECORD,
    LayerInfo,
    SegmentData,
    SelectedLayers,
    VastInfo,
    encode_counted,
    encode_names,
    records_from_words,
)
from membrane_py.vastapi.rle import rle_decode, rle_encode
from mock_vast_server.layers import Layer, LayerKind, LoadRefused
from mock_vast_server.skeletons import SkelNode, dfs_order
from mock_vast_server.state import MockVast, StateError
from mock_vast_server.tables import ANCHOR, BBOX, COL1, COL2, FLAGS, SELECTED_FLAG, new_segment_rows

log = logging.getLogger("mock_vast_server")

API_VERSION = 1
CUBE_SIZE = 16

_TAGS = {"u": Tag.UINT32, "i": Tag.INT32, "d": Tag.DOUBLE, "t": Tag.TEXT, "b": Tag.BLOCK}
#: Letter of every tag a request may carry, for error messages (``q``: uint64, which no
#: command takes as a parameter).
_LETTERS = {tag: letter for letter, tag in _TAGS.items()} | {Tag.UINT64: "q"}


@dataclass
class Bulk:
    """A bulk reply: the bytes of a C-contiguous array, sent without tags or copies."""

    data: np.ndarray


Reply = list[Value] | Bulk
Handler = Callable[..., Reply | None]


@dataclass(frozen=True)
class _Entry:
    fn: Handler
    signatures: tuple[str, ...]
    locked: bool
    raw: bool  # gets the Value list itself (variadic commands) and checks it alone


HANDLERS: dict[int, _Entry] = {}


def command(
    cmd: Cmd, *signatures: str, locked: bool = True, raw: bool = False
) -> Callable[[Handler], Handler]:
    """Register a handler for ``cmd`` accepting any of the parameter ``signatures``."""

    def register(fn: Handler) -> Handler:
        HANDLERS[int(cmd)] = _Entry(fn, signatures or ("",), locked, raw)
        return fn

    return register


def _matches(values: list[Value], sig: str) -> bool:
    return len(values) == len(sig) and all(
        v.tag is _TAGS[c] for v, c in zip(values, sig, strict=True))


def dispatch(state: MockVast, cmd: int, values: list[Value]) -> Reply:
    """Run one command; returns the reply values or raises StateError."""
    entry = HANDLERS.get(cmd)
    if entry is None:
        raise StateError(1, f"command {cmd} is not implemented by the mock server")
    if cmd in state.without:
        log.info("command %d answered with error 1 (--without: as a VAST without it)", cmd)
        raise StateError(1, f"command {cmd} is switched off (--without)")
    if entry.raw:
        return entry.fn(state, values)
    if not any(_matches(values, s) for s in entry.signatures):
        got = "".join(_LETTERS[v.tag] for v in values)
        raise StateError(3, f"command {cmd} expects parameters {' or '.join(entry.signatures)!r}, "
                            f"got {got!r}")
    args = [v.value for v in values]
    if entry.locked:
        with state.lock:
            reply = entry.fn(state, *args)
    else:
        reply = entry.fn(state, *args)
    return [] if reply is None else reply


def _counted(rows: np.ndarray, layout: np.dtype) -> Bulk:
    """u32 N followed by N records of ``layout`` made from int64 rows of its words."""
    return Bulk(encode_counted(records_from_words(rows, layout)))


def _names(names: list[str]) -> Bulk:
    return Bulk(np.frombuffer(encode_names(names), dtype=np.uint8))


# --- info and view ---------------------------------------------------------------------


@command(Cmd.GETINFO)
def get_info(s: MockVast) -> Reply:
    return VastInfo(data_size=s.em.shape, cube_size=(CUBE_SIZE,) * 3, n_mips=s.em.n_mips,
                    voxel_size=s.em.voxel_size, view=tuple(s.view)).to_values()


@command(Cmd.GETVIEWCOORDINATES)
def get_view(s: MockVast) -> Reply:
    return [i32(c) for c in s.view]


@command(Cmd.SETVIEWCOORDINATES, "uuu")
def set_view(s: MockVast, x: int, y: int, z: int) -> None:
    zs, ys, xs = s.em.shape
    if x >= xs or y >= ys or z >= zs:
        raise StateError(10, f"view ({x}, {y}, {z}) outside the volume ({xs}, {ys}, {zs})")
    s.view = [x, y, z]
    s.save_meta()


@command(Cmd.GETVIEWZOOM)
def get_zoom(s: MockVast) -> Reply:
    return [i32(s.zoom)]


@command(Cmd.SETVIEWZOOM, "i")
def set_zoom(s: MockVast, zoom: int) -> None:
    s.zoom = zoom
    s.save_meta()


@command(Cmd.GETAPIVERSION)
def get_api_version(s: MockVast) -> Reply:
    return [u32(API_VERSION)]


@command(Cmd.GETHARDWAREINFO)
def get_hardware_info(s: MockVast) -> Reply:
    return ([u32(os.cpu_count() or 1)] + [f64(0.0)] * 7
            + [text("mock_vast_server"), text("unknown cpu"), text(""), text("none"), text("none")])


# --- layers ----------------------------------------------------------------------------


@command(Cmd.GETNROFLAYERS)
def get_nr_of_layers(s: MockVast) -> Reply:
    return [u32(len(s.layers))]


@command(Cmd.GETLAYERINFO, "u")
def get_layer_info(s: MockVast, nr: int) -> Reply:
    la = s.layer(nr)
    p = la.props
    return LayerInfo(
        type=int(la.kind), editable=p["editable"], visible=p["visible"],
        brightness=p["brightness"], contrast=p["contrast"], blend_mode=p["blendmode"],
        blend_or_add=p["blendoradd"], is_changed=False, opacity_level=p["opacity"],
        brightness_level=p["brightnesslevel"], contrast_level=p["contrastlevel"],
        tint_color=p["tintcolor"],
        target_color=(p["redtarget"], p["greentarget"], p["bluetarget"]),
        bytes_per_pixel=la.bytes_per_pixel, inverted=p["inverted"], solo_mode=p["solomode"],
        name=la.name).to_values()


# SETLAYERINFO bit -> (property, tag letter), in bit order.
LAYER_INFO_BITS = [("editable", "i"), ("visible", "i"), ("brightness", "i"), ("contrast", "i"),
                   ("opacity", "d"), ("brightnesslevel", "d"), ("contrastlevel", "d"),
                   ("blendmode", "i"), ("blendoradd", "i"), ("tintcolor", "u"),
                   ("redtarget", "u"), ("greentarget", "u"), ("bluetarget", "u"),
                   ("inverted", "u"), ("solomode", "u")]


@command(Cmd.SETLAYERINFO, raw=True)
def set_layer_info(s: MockVast, values: list[Value]) -> Reply:
    if len(values) < 2 or values[0].tag is not Tag.UINT32 or values[1].tag is not Tag.UINT32:
        raise StateError(3, "SETLAYERINFO expects u bitmask, u layernr, then the selected fields")
    mask, nr = values[0].value, values[1].value
    fields = [f for bit, f in enumerate(LAYER_INFO_BITS) if mask >> bit & 1]
    if mask >> len(LAYER_INFO_BITS) or not _matches(values[2:], "".join(c for _, c in fields)):
        raise StateError(3, f"SETLAYERINFO bitmask {mask:#x} does not match the values sent")
    with s.lock:
        la = s.layer(nr)
        for (name, _), v in zip(fields, values[2:], strict=True):
            la.props[name] = v.value
        s.save_meta()
    return []


def _select(s: MockVast, api: bool, nr: int) -> None:
    (s.api if api else s.ui).select(s.layer(nr))
    s.save_meta()


def _selection(s: MockVast, api: bool) -> Reply:
    sel = s.api if api else s.ui
    return SelectedLayers(*(-1 if la is None else s.layers.index(la)
                            for la in sel.slots())).to_values()


@command(Cmd.SETSELECTEDLAYERNR, "i")
def set_selected_layer(s: MockVast, nr: int) -> None:
    _select(s, False, nr)


@command(Cmd.GETSELECTEDLAYERNR)
def get_selected_layer(s: MockVast) -> Reply:
    return _selection(s, False)


@command(Cmd.SETSELECTEDAPILAYERNR, "i")
def set_selected_api_layer(s: MockVast, nr: int) -> None:
    _select(s, True, nr)


@command(Cmd.GETSELECTEDAPILAYERNR)
def get_selected_api_layer(s: MockVast) -> Reply:
    return _selection(s, True)


@command(Cmd.GETAPILAYERSENABLED)
def get_api_layers_enabled(s: MockVast) -> Reply:
    return [u32(s.api_enabled)]


@command(Cmd.SETAPILAYERSENABLED, "u")
def set_api_layers_enabled(s: MockVast, flag: int) -> None:
    s.api_enabled = 1 if flag else 0
    s.save_meta()


NEW_LAYER_KINDS = {1: LayerKind.ANNOTATION, 2: LayerKind.SEGMENTATION, 3: LayerKind.TOOL,
                   4: LayerKind.SEGMENTATION}


@command(Cmd.ADDNEWLAYER, "iit")
def add_new_layer(s: MockVast, kind: int, ref: int, name: str) -> Reply:
    if kind not in NEW_LAYER_KINDS:
        raise StateError(31, f"ADDNEWLAYER type {kind} is not 1, 2, 3 or 4")
    if ref >= len(s.layers):
        raise StateError(30, f"reference layer {ref} does not exist")
    return [u32(s.add_layer(NEW_LAYER_KINDS[kind], name, ref))]


@command(Cmd.LOADLAYER, "it")
def load_layer(s: MockVast, ref: int, filename: str) -> Reply:
    if ref >= len(s.layers):
        raise StateError(30, f"reference layer {ref} does not exist")
    try:
        volume = s.load_policy.open(filename)
    except LoadRefused as exc:
        log.warning("LOADLAYER refused: %s", exc)
        raise StateError(32, str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - any reader failure is a failed layer load
        log.error("LOADLAYER %s failed: %s", filename, exc)
        raise StateError(32, f"cannot open {filename}: {exc}") from exc
    if volume.channels not in (1, 3):
        raise StateError(32, f"{filename} has {volume.channels} channels; use 1 or 3")
    name = getattr(volume, "name", None) or os.path.basename(filename)
    nr = s.add_layer(LayerKind.IMAGE, name, ref, volume=volume, source=filename)
    log.info("LOADLAYER %s as layer %d", filename, nr)
    return [u32(nr)]


@command(Cmd.SAVELAYER, "uuut")
def save_layer(s: MockVast, nr: int, force: int, subformat: int, filename: str) -> None:
    la = s.layer(nr)
    if filename:
        log.info("SAVELAYER %d: %r ignored; layers persist in %s", nr, filename, s.state_dir)
    s.save_layer(la)


@command(Cmd.REMOVELAYER, "uu")
def remove_layer(s: MockVast, nr: int, force: int) -> None:
    s.remove_layer(nr)


@command(Cmd.MOVELAYER, "uu")
def move_layer(s: MockVast, moved: int, after: int) -> Reply:
    la, ref = s.layer(moved), s.layer(after)
    if la is not ref:
        s.layers.remove(la)
        s.layers.insert(s.layers.index(ref) + 1, la)
        s.save_meta()
    return [u32(s.layers.index(la))]


@command(Cmd.GETMIPMAPSCALEFACTORS, "u")
def get_mipmap_scale_factors(s: MockVast, nr: int) -> Reply:
    rows = [(1 << m, 1 << m, 1) for m in range(s.n_mips(s.layer(nr)))]
    return Bulk(encode_counted(np.array([(r,) for r in rows], dtype=MIP_FACTORS_RECORD)))


# --- segment table ---------------------------------------------------------------------


def _segment(s: MockVast, i: int, allow_background: bool = True) -> tuple[Layer, np.ndarray]:
    la = s.selected_seg()
    if not (0 if allow_background else 1) <= i < len(la.segments):
        raise StateError(20, f"segment {i} does not exist (1..{len(la.segments) - 1})")
    return la, la.segments.rec


def _flags(s: MockVast, la: Layer, i: int) -> int:
    return int(la.segments.rec[i, FLAGS]) | (SELECTED_FLAG if i and i == s.selected_segment else 0)


@command(Cmd.GETNUMBEROFSEGMENTS)
def get_number_of_segments(s: MockVast) -> Reply:
    return [u32(len(s.selected_seg().segments))]


@command(Cmd.GETSEGMENTDATA, "u")
def get_segment_data(s: MockVast, i: int) -> Reply:
    la, rec = _segment(s, i)
    recs = records_from_words(rec[i], SEGMENT_RECORD)
    recs["flags"] = _flags(s, la, i)
    return SegmentData.from_record(i, recs[0]).to_values()


@command(Cmd.GETSEGMENTNAME, "u")
def get_segment_name(s: MockVast, i: int) -> Reply:
    la, _ = _segment(s, i)
    return [text(la.segments.names[i])]


@command(Cmd.SETANCHORPOINT, "uuuu")
def set_anchor_point(s: MockVast, i: int, x: int, y: int, z: int) -> None:
    la, _ = _segment(s, i, allow_background=False)
    la.segments.set(i, ANCHOR, [x, y, z])
    s.segments_changed(la)


@command(Cmd.SETSEGMENTNAME, "ut")
def set_segment_name(s: MockVast, i: int, name: str) -> None:
    la, _ = _segment(s, i)
    la.segments.rename(i, name)
    s.segments_changed(la)


@command(Cmd.SETSEGMENTCOLOR, "uuu")
def set_segment_color(s: MockVast, i: int, col1: int, col2: int) -> None:
    la, _ = _segment(s, i)
    la.segments.set(i, [COL1, COL2], [col1, col2])
    s.segments_changed(la)


@command(Cmd.SETSEGMENTBBOX, "uuuuuuu")
def set_segment_bbox(s: MockVast, i: int, *box: int) -> None:
    la, _ = _segment(s, i, allow_background=False)
    la.segments.set(i, BBOX, box)
    s.segments_changed(la)


@command(Cmd.GETALLSEGMENTDATA)
def get_all_segment_data(s: MockVast) -> Reply:
    la = s.selected_seg()
    rec = la.segments.rec.copy()
    if 0 < s.selected_segment < len(rec):
        rec[s.selected_segment, FLAGS] |= SELECTED_FLAG
    return _counted(rec, SEGMENT_RECORD)


@command(Cmd.GETALLSEGMENTNAMES)
def get_all_segment_names(s: MockVast) -> Reply:
    return _names(s.selected_seg().segments.names)


@command(Cmd.SETSELECTEDSEGMENTNR, "i")
def set_selected_segment(s: MockVast, i: int) -> None:
    _segment(s, i)
    s.selected_segment = i


@command(Cmd.GETSELECTEDSEGMENTNR)
def get_selected_segment(s: MockVast) -> Reply:
    return [u32(s.selected_segment)]


@command(Cmd.GETFIRSTSEGMENTNR)
def get_first_segment(s: MockVast) -> Reply:
    return [u32(s.selected_seg().segments.first_top())]


@command(Cmd.ADDSEGMENT, "uut")
def add_segment(s: MockVast, ref: int, as_child: int, name: str) -> Reply:
    la, _ = _segment(s, ref)
    table = la.segments
    if len(table) > 0xFFFF:
        raise StateError(20, "the segment table is full (65535 segments)")
    i = len(table)
    table.append(new_segment_rows(np.array([i])), [name])
    table.link(i, ref, bool(as_child) and ref != 0)
    s.segments_changed(la)
    return [u32(i)]


@command(Cmd.MOVESEGMENT, "uuu")
def move_segment(s: MockVast, i: int, ref: int, as_child: int) -> None:
    la, _ = _segment(s, i, allow_background=False)
    _segment(s, ref)
    if la.segments.is_ancestor(i, ref):
        raise StateError(14, f"cannot move segment {i} below itself ({ref})")
    la.segments.unlink(i)
    la.segments.link(i, ref, bool(as_child) and ref != 0)
    s.segments_changed(la)


# --- voxel data ------------------------------------------------------------------------


def _seg_read(s: MockVast, mip: int, *vbox: int) -> np.ndarray:
    la = s.selected_seg()
    return s.read_seg(la, mip, s.check_box(la, mip, list(vbox), 2))


@command(Cmd.GETSEGIMAGERAW, "uuuuuuu")
def get_seg_raw(s: MockVast, mip: int, *vbox: int) -> Reply:
    return Bulk(_seg_read(s, mip, *vbox))


@command(Cmd.GETSEGIMAGERAWIMMEDIATE, "uuuuuuuu")
def get_seg_raw_immediate(s: MockVast, mip: int, *rest: int) -> Reply:
    return Bulk(_seg_read(s, mip, *rest[:6]))


@command(Cmd.GETSEGIMAGERLE, "uuuuuuu")
def get_seg_rle(s: MockVast, mip: int, *vbox: int) -> Reply:
    data = _seg_read(s, mip, *vbox)
    pairs = rle_encode(data)
    if pairs.nbytes > data.nbytes:
        raise StateError(22, "RLE would be larger than raw; request raw instead")
    return Bulk(pairs)


@command(Cmd.GETSEGIMAGERLEIMMEDIATE, "uuuuuuuu")
def get_seg_rle_immediate(s: MockVast, mip: int, *rest: int) -> Reply:
    return get_seg_rle(s, mip, *rest[:6])


@command(Cmd.SETSEGTRANSLATION, "b")
def set_seg_translation(s: MockVast, blk: bytes) -> None:
    if len(blk) % 8:
        raise StateError(3, f"translation block of {len(blk)} bytes is not a list of u32 pairs")
    s.set_translation(np.frombuffer(blk, dtype="<u4"))


def _seg_write(s: MockVast, mip: int, vbox: tuple[int, ...], decode: Callable) -> None:
    la = s.selected_seg()
    if not la.props["editable"]:
        raise StateError(7, f"layer {la.name} is not editable")
    box = s.check_box(la, mip, list(vbox), 2)
    try:
        block = decode(box.size)
    except ValueError as exc:
        raise StateError(13, f"block does not match box {vbox}: {exc}") from exc
    s.write_seg(la, mip, box, block.reshape(box.shape))


@command(Cmd.SETSEGIMAGERAW, "uuuuuuub")
def set_seg_raw(s: MockVast, mip: int, *args: object) -> None:
    *vbox, blk = args

    def decode(n: int) -> np.ndarray:
        if len(blk) != 2 * n:
            raise ValueError(f"{len(blk)} bytes sent, {2 * n} expected")
        return np.frombuffer(blk, dtype="<u2")

    _seg_write(s, mip, tuple(vbox), decode)


@command(Cmd.SETSEGIMAGERLE, "uuuuuuub")
def set_seg_rle(s: MockVast, mip: int, *args: object) -> None:
    *vbox, blk = args
    if len(blk) % 4:
        raise StateError(13, f"RLE block of {len(blk)} bytes is not a list of uint16 pairs")
    _seg_write(s, mip, tuple(vbox), lambda n: rle_decode(blk, n))


def _em_read(s: MockVast, nr: int, mip: int, vbox: tuple[int, ...]) -> Reply:
    with s.lock:
        la = s.layer(nr, LayerKind.IMAGE)
        box = s.check_box(la, mip, list(vbox), la.bytes_per_pixel)
    try:
        data = la.volume.read(box, mip)
    except OSError as exc:
        raise StateError(4, f"reading {la.name}: {exc}") from exc
    if la.volume.channels == 3:
        data = data[..., ::-1]  # VAST sends RGB as B, G, R
    return Bulk(np.ascontiguousarray(data))


@command(Cmd.GETEMIMAGERAW, "uuuuuuuu", locked=False)
def get_em_raw(s: MockVast, nr: int, mip: int, *vbox: int) -> Reply:
    return _em_read(s, nr, mip, vbox)


@command(Cmd.GETEMIMAGERAWIMMEDIATE, "uuuuuuuuu", locked=False)
def get_em_raw_immediate(s: MockVast, nr: int, mip: int, *rest: int) -> Reply:
    return _em_read(s, nr, mip, rest[:6])


@command(Cmd.REFRESHLAYERREGION, "uuuuuuu")
def refresh_layer_region(s: MockVast, nr: int, *vbox: int) -> None:
    """Reread a mip-0 box of an image layer. The mock's file layers already read tiles
    afresh when their files change, so it only checks the request and logs it."""
    la = s.layer(nr)
    if la.kind is not LayerKind.IMAGE:
        raise StateError(31, f"layer {nr} is not an image layer")
    s.check_box(la, 0, list(vbox), 0)
    log.info("REFRESHLAYERREGION layer %d (%s): x %d..%d, y %d..%d, z %d..%d", nr, la.name,
             *vbox)


@command(Cmd.GETPIXELVALUE, "uuuuu")
def get_pixel_value(s: MockVast, nr: int, mip: int, x: int, y: int, z: int) -> Reply:
    la = s.layer(nr)
    box = s.check_box(la, mip, [x >> mip, x >> mip, y >> mip, y >> mip, z, z], 8)
    if la.kind is LayerKind.IMAGE:
        raw = np.ascontiguousarray(la.volume.read(box, mip)[..., ::-1] if la.volume.channels == 3
                                   else la.volume.read(box, mip)).tobytes()
    elif la.kind is LayerKind.SEGMENTATION:
        raw = s.read_seg(la, mip, box).tobytes()
    else:
        raise StateError(31, f"layer {nr} holds no voxels")
    return [u64(int.from_bytes(raw, "little"))]


# --- annotation objects and skeletons --------------------------------------------------


def _object(s: MockVast, i: int) -> int:
    anno = s.selected_anno()
    if not 1 <= i < len(anno.table):
        raise StateError(20, f"annotation object {i} does not exist (1..{len(anno.table) - 1})")
    return i


def _skeleton(s: MockVast) -> int:
    anno = s.selected_anno()
    i = anno.selected
    if i == 0:
        raise StateError(21, "no annotation object is selected")
    if anno.table.rec[i, FLAGS] & 0xFFFF != 1:
        raise StateError(23, f"annotation object {i} is a folder, not a skeleton")
    return i


def _save_anno(s: MockVast) -> None:
    s.save_layer(s.target.anno)


@command(Cmd.GETANNOLAYERNROFOBJECTS)
def get_anno_nr_of_objects(s: MockVast) -> Reply:
    anno = s.selected_anno()
    return [u32(len(anno.table) - 1), u32(anno.table.first_top())]


@command(Cmd.GETANNOLAYEROBJECTDATA)
def get_anno_object_data(s: MockVast) -> Reply:
    return _counted(s.selected_anno().table.rec[1:], ANNO_RECORD)


@command(Cmd.GETANNOLAYEROBJECTNAMES)
def get_anno_object_names(s: MockVast) -> Reply:
    return _names(s.selected_anno().table.names[1:])


@command(Cmd.ADDNEWANNOOBJECT, "uuut")
def add_new_anno_object(s: MockVast, ref: int, as_child: int, kind: int, name: str) -> Reply:
    anno = s.selected_anno()
    if kind not in (0, 1):
        raise StateError(23, f"annotation object type {kind} is not 0 (folder) or 1 (skeleton)")
    if ref:
        _object(s, ref)
    i = anno.add_object(name, kind, ref, bool(as_child) and ref != 0)
    _save_anno(s)
    return [u32(i)]


@command(Cmd.SETSELECTEDANNOOBJECTNR, "u")
def set_selected_anno_object(s: MockVast, i: int) -> None:
    s.selected_anno().selected = _object(s, i)
    _save_anno(s)


@command(Cmd.GETSELECTEDANNOOBJECTNR)
def get_selected_anno_object(s: MockVast) -> Reply:
    return [u32(s.selected_anno().selected)]


@command(Cmd.GETAONODEDATA)
def get_ao_node_data(s: MockVast) -> Reply:
    anno = s.selected_anno()
    i = _skeleton(s)
    nodes = anno.nodes[i]
    dfs = dfs_order(nodes)
    rec = np.zeros(len(nodes), dtype=NODE_RECORD)
    parents = [n.parent for n in nodes]
    for k, idx in enumerate(dfs.order):
        n = nodes[idx]
        kids = dfs.children[idx]
        siblings = dfs.children[n.parent] if n.parent >= 0 else [j for j, p in enumerate(parents)
                                                                  if p < 0]
        pos = siblings.index(idx)
        rec["flags"][k] = 1 if idx == anno.selected_node[i] else 0
        rec["xyz"][k] = (n.x, n.y, n.z)
        rec["links"][k] = (dfs.number[n.parent] if n.parent >= 0 else NONE32,
                           dfs.number[kids[0]] if kids else NONE32,
                           dfs.number[siblings[pos + 1]] if pos + 1 < len(siblings) else NONE32)
        rec["radius"][k] = n.radius
    return Bulk(encode_counted(rec))


@command(Cmd.SETSELECTEDAONODEBYDFSNR, "u")
def set_selected_ao_node(s: MockVast, nr: int) -> None:
    anno = s.selected_anno()
    i = _skeleton(s)
    order = dfs_order(anno.nodes[i]).order
    if nr >= len(order):
        raise StateError(20, f"node {nr} does not exist (skeleton has {len(order)} nodes)")
    anno.selected_node[i] = order[nr]
    _save_anno(s)


@command(Cmd.GETSELECTEDAONODENR)
def get_selected_ao_node(s: MockVast) -> Reply:
    anno = s.selected_anno()
    i = _skeleton(s)
    sel = anno.selected_node[i]
    return [u32(dfs_order(anno.nodes[i]).number[sel] if sel >= 0 else NONE32)]


@command(Cmd.ADDAONODE, "uuu")
def add_ao_node(s: MockVast, x: int, y: int, z: int) -> None:
    zs, ys, xs = s.em.shape
    if x >= xs or y >= ys or z >= zs:
        raise StateError(10, f"node ({x}, {y}, {z}) outside the volume ({xs}, {ys}, {zs})")
    anno = s.selected_anno()
    i = _skeleton(s)
    anno.nodes[i].append(SkelNode(x, y, z, anno.selected_node[i]))
    anno.selected_node[i] = len(anno.nodes[i]) - 1
    anno.update_extent(i)
    _save_anno(s)


# --- error popups (VastTools switches them off) -----------------------------------------


def _popup_get(s: MockVast, nr: int) -> Reply:
    return [u32(s.popups.get(nr, 1))]


def _popup_set(s: MockVast, nr: int, flag: int) -> None:
    s.popups[nr] = 1 if flag else 0


for _get, _set in ((Cmd.GETERRORPOPUPSENABLED, Cmd.SETERRORPOPUPSENABLED),
                   (Cmd.GETPOPUPSENABLED, Cmd.SETPOPUPSENABLED)):
    command(_get, "u")(_popup_get)
    command(_set, "uu")(_popup_set)
