"""The .vsvi codec: key mapping, strict writing, lenient reading, tile path templates."""

import json

import pytest

from membrane_py.vastapi.descriptors import Vsvi, format_tile_path, read_vsvi, write_vsvi


def _example() -> Vsvi:
    return Vsvi(
        source_file_name_template="./mip0/Sect_%06d/sect_%06d_r%d_c%d.png",
        source_param_sequence="ssrc",
        source_min_s=0, source_max_s=99, source_min_r=0, source_max_r=3,
        source_min_c=0, source_max_c=4,
        target_data_size_x=5000, target_data_size_y=4000, target_data_size_z=100,
        mip_map_file_name_template="./mip%d/Sect_%06d/sect_%06d_r%d_c%d.png",
        mip_map_param_sequence="mssrc", source_min_m=1, source_max_m=5,
        target_voxel_size_x_nm=4.0, target_voxel_size_y_nm=4.0, target_voxel_size_z_nm=30.0,
        target_layer_name="probabilities",
    )


def test_json_keys_are_vast_camel_case():
    d = _example().to_json_dict()
    assert d["TargetVoxelSizeXnm"] == 4.0
    assert d["SourceMinS"] == 0 and d["SourceMaxS"] == 99
    assert d["MipMapFileNameTemplate"].startswith("./mip%d/")
    assert d["ServerType"] == "imagetiles" and d["MissingImagePolicy"] == "black"
    assert "SourceSectionOrder" not in d  # unset optional key left out
    assert Vsvi.from_json_dict(d) == _example()


def test_write_is_valid_json_and_round_trips(tmp_path):
    path = write_vsvi(tmp_path / "sub" / "layer.vsvi", _example())
    text = path.read_text()
    assert "\\" not in text
    assert json.loads(text)["TargetLayerName"] == "probabilities"
    assert read_vsvi(path) == _example()
    assert not [p for p in path.parent.iterdir() if p.name != "layer.vsvi"]  # no temp left


def test_lenient_reader_accepts_hand_written_files(tmp_path):
    path = tmp_path / "hand.vsvi"
    path.write_text(
        '{\n \u201cComment\u201d: \u201cmade by hand\u201d,\n'
        ' "SourceFileNameTemplate": ".\\mip0\\slice%04d\\%04d_tr%d-tc%d.png",\n'
        ' "SourceParamSequence": "ssrc",\n'
        ' "SourceMinS": 1, "SourceMaxS": 10, "SourceMinR": 1, "SourceMaxR": 4,\n'
        ' "SourceMinC": 1, "SourceMaxC": 5,\n'
        ' "MipMapFileNameTemplate": ".\\\\mip%d\\\\slice%04d\\\\%04d_tr%d-tc%d.png",\n'
        ' "sourceminm": "1", "SourceMaxM": 3,\n'
        ' "TargetDataSizeX": 5000, "TargetDataSizeY": 4000, "TargetDataSizeZ": 10,\n'
        ' "TargetVoxelSizeZnm": 30,\n}\n', encoding="utf-8")
    v = read_vsvi(path)
    assert v.comment == "made by hand"
    assert v.source_file_name_template == "./mip0/slice%04d/%04d_tr%d-tc%d.png"
    assert v.mip_map_file_name_template == "./mip%d/slice%04d/%04d_tr%d-tc%d.png"
    assert (v.source_min_m, v.source_max_m, v.source_min_s) == (1, 3, 1)
    assert v.target_voxel_size_z_nm == 30.0 and v.missing_image_policy == "black"


def test_reader_names_file_and_problem(tmp_path):
    bad = tmp_path / "bad.vsvi"
    bad.write_text('{"SourceParamSequence": "ssrc", ')
    with pytest.raises(ValueError, match="bad.vsvi.*line"):
        read_vsvi(bad)
    partial = tmp_path / "partial.vsvi"
    partial.write_text('{"SourceParamSequence": "ssrc"}')
    with pytest.raises(ValueError, match="partial.vsvi.*SourceFileNameTemplate"):
        read_vsvi(partial)


def test_format_tile_path_fills_left_to_right():
    assert format_tile_path("./mip%d/Sect_%06d/sect_%06d_r%d_c%d.png", "mssrc",
                            s=7, r=2, c=3, m=1) == "./mip1/Sect_000007/sect_000007_r2_c3.png"
    assert format_tile_path("s%04d/r%02d/%d_%d%%.png", "srsc", s=7, r=2, c=3) == \
        "s0007/r02/7_3%.png"
    with pytest.raises(ValueError, match="placeholders"):
        format_tile_path("%d_%d", "s", s=1, r=0, c=0)
    with pytest.raises(ValueError, match="unknown letter"):
        format_tile_path("%d", "q", s=1, r=0, c=0)
