"""VAST ``.vsvi`` image-stack descriptors: a dataclass, a strict writer and a lenient reader.

A ``.vsvi`` file tells VAST where the PNG tiles of an image layer lie (printf-style path
templates relative to the descriptor), which section/row/column/mip ranges exist and how
large the volume is. We write valid JSON with ``./``-relative forward-slash paths; the
reader also accepts what people write by hand: single unescaped backslashes, typographic
quotes and trailing commas.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from pathlib import Path

from membrane_py.atomic import write_text_atomic

#: snake_case field -> VAST's key, for every key the descriptor format uses
_KEYS: dict[str, str] = {
    "comment": "Comment",
    "server_type": "ServerType",
    "source_file_name_template": "SourceFileNameTemplate",
    "source_param_sequence": "SourceParamSequence",
    "source_min_s": "SourceMinS",
    "source_max_s": "SourceMaxS",
    "source_min_r": "SourceMinR",
    "source_max_r": "SourceMaxR",
    "source_min_c": "SourceMinC",
    "source_max_c": "SourceMaxC",
    "mip_map_file_name_template": "MipMapFileNameTemplate",
    "mip_map_param_sequence": "MipMapParamSequence",
    "source_min_m": "SourceMinM",
    "source_max_m": "SourceMaxM",
    "source_tile_size_x": "SourceTileSizeX",
    "source_tile_size_y": "SourceTileSizeY",
    "source_bytes_per_pixel": "SourceBytesPerPixel",
    "missing_image_policy": "MissingImagePolicy",
    "source_section_order": "SourceSectionOrder",
    "target_data_size_x": "TargetDataSizeX",
    "target_data_size_y": "TargetDataSizeY",
    "target_data_size_z": "TargetDataSizeZ",
    "offset_x": "OffsetX",
    "offset_y": "OffsetY",
    "offset_z": "OffsetZ",
    "offset_mip": "OffsetMip",
    "target_voxel_size_x_nm": "TargetVoxelSizeXnm",
    "target_voxel_size_y_nm": "TargetVoxelSizeYnm",
    "target_voxel_size_z_nm": "TargetVoxelSizeZnm",
    "target_layer_name": "TargetLayerName",
}
_FIELD_OF_KEY = {key.lower(): name for name, key in _KEYS.items()}
_REQUIRED = (
    "source_file_name_template", "source_param_sequence",
    "source_min_s", "source_max_s", "source_min_r", "source_max_r",
    "source_min_c", "source_max_c",
    "target_data_size_x", "target_data_size_y", "target_data_size_z",
)
_PLACEHOLDER = re.compile(r"%(%|0?\d*d)")


@dataclass
class Vsvi:
    """Every field of a ``.vsvi`` descriptor; ranges are inclusive as in VAST."""

    source_file_name_template: str
    source_param_sequence: str
    source_min_s: int
    source_max_s: int
    source_min_r: int
    source_max_r: int
    source_min_c: int
    source_max_c: int
    target_data_size_x: int
    target_data_size_y: int
    target_data_size_z: int
    comment: str = ""
    server_type: str = "imagetiles"
    mip_map_file_name_template: str | None = None
    mip_map_param_sequence: str | None = None
    source_min_m: int = 0
    source_max_m: int = 0
    source_tile_size_x: int = 1024
    source_tile_size_y: int = 1024
    source_bytes_per_pixel: int = 1
    missing_image_policy: str = "black"
    #: optional explicit z order, comma-separated section numbers (None = MinS..MaxS)
    source_section_order: str | None = None
    offset_x: int = 0
    offset_y: int = 0
    offset_z: int = 0
    offset_mip: int = 0
    target_voxel_size_x_nm: float = 1.0
    target_voxel_size_y_nm: float = 1.0
    target_voxel_size_z_nm: float = 1.0
    target_layer_name: str = ""

    def to_json_dict(self) -> dict:
        """VAST's CamelCase keys, in the usual order; unset optional keys are left out."""
        out = {}
        for name, key in _KEYS.items():
            value = getattr(self, name)
            if value is not None:
                out[key] = value
        return out

    @classmethod
    def from_json_dict(cls, d: dict) -> Vsvi:
        """From CamelCase keys (matched case-insensitively); unknown keys are ignored."""
        kwargs = {}
        types = {f.name: f.type for f in fields(cls)}
        for key, value in d.items():
            name = _FIELD_OF_KEY.get(str(key).lower())
            if name is None:
                continue
            kwargs[name] = _coerce(value, types[name], name, key)
        missing = [_KEYS[n] for n in _REQUIRED if n not in kwargs]
        if missing:
            raise ValueError(f"missing required key(s): {', '.join(missing)}")
        return cls(**kwargs)

    def section_numbers(self) -> list[int]:
        """The section number of each z index (explicit order, else MinS..MaxS)."""
        if self.source_section_order:
            return [int(s) for s in str(self.source_section_order).replace(" ", "").split(",") if s]
        return list(range(self.source_min_s, self.source_max_s + 1))


def _coerce(value, type_name: str, name: str, key: str):
    """Numbers given as strings are accepted; template paths get '/' separators."""
    try:
        if type_name == "int":
            return int(float(value))
        if type_name == "float":
            return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"key {key!r} must be a number, got {value!r}") from None
    if value is None:
        return None
    text = str(value)
    return text.replace("\\", "/") if name.endswith("template") else text


def format_tile_path(template: str, sequence: str, *, s: int, r: int, c: int, m: int = 0) -> str:
    """Fill the %d / %0Nd placeholders of a tile template left to right from ``sequence``.

    ``sequence`` holds one letter per placeholder: s section, r row, c column, m mip.
    """
    values = {"s": s, "r": r, "c": c, "m": m}
    letters = iter(sequence.lower())
    count = 0

    def fill(match: re.Match) -> str:
        nonlocal count
        if match.group(1) == "%":
            return "%"
        count += 1
        letter = next(letters, None)
        if letter not in values:
            raise ValueError(
                f"template {template!r} has more placeholders than param sequence {sequence!r}"
                if letter is None else f"unknown letter {letter!r} in param sequence {sequence!r}")
        return ("%" + match.group(1)) % values[letter]

    out = _PLACEHOLDER.sub(fill, template)
    if count != len(sequence):
        raise ValueError(f"template {template!r} has {count} placeholders but param sequence "
                         f"{sequence!r} has {len(sequence)} letters")
    return out


def write_vsvi(path: str | Path, vsvi: Vsvi) -> Path:
    """Write ``vsvi`` as pretty JSON, atomically (temporary file, then rename)."""
    return write_text_atomic(path, json.dumps(vsvi.to_json_dict(), indent=1) + "\n")


def _unescape_backslash(match: re.Match) -> str:
    escaped = match.group(1)
    if escaped == '"' or len(escaped) == 5:
        return match.group(0)  # a real JSON escape: keep
    return "/" + ("" if escaped == "\\" else escaped)  # '\\' or a lone '\' is a path separator


def parse_vsvi_text(text: str) -> dict:
    """Parse descriptor text leniently into a dict (see module docstring for what is tolerated)."""
    text = text.lstrip("\ufeff").replace("\u201c", '"').replace("\u201d", '"')
    text = re.sub(r'\\(\\|"|u[0-9a-fA-F]{4}|.?)', _unescape_backslash, text, flags=re.DOTALL)
    text = re.sub(r",(\s*[}\]])", r"\1", text)
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("the top level is not a JSON object")
    return data


def read_vsvi(path: str | Path) -> Vsvi:
    """Read a ``.vsvi`` file; ValueError naming the file and the problem when it is unusable."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except FileNotFoundError:
        raise FileNotFoundError(f"descriptor not found: {path}") from None
    try:
        return Vsvi.from_json_dict(parse_vsvi_text(text))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a readable .vsvi descriptor (line {e.lineno}, "
                         f"column {e.colno}: {e.msg})") from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
