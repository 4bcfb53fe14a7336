"""The volume runner through a real mock VAST server: tiles, pyramid, zarr, descriptor,
on-the-fly layer, resume, cancel, and a killed `membrane predict` process restarted."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import numpy as np
import pytest
import tifffile
import zarr
from cli_process import CLI
from predict_support import folder_bytes, loading_server, tile_keys, tiny_checkpoint

from membrane_py.codes import classes_to_tile_u8, probability_to_u8, read_png
from membrane_py.events import Cancelled, CancelToken
from membrane_py.geometry import Box
from membrane_py.infer.engine import load_predictor
from membrane_py.predict.job import PredictJob, RegionSpec
from membrane_py.predict.runner import entropy_bits, is_blank, run_prediction
from membrane_py.predict.vastload import RECORD_FILE
from membrane_py.vastapi.client import VastClient
from membrane_py.vastapi.descriptors import read_vsvi
from membrane_py.volumes.base import downsample_xy
from membrane_py.volumes.synthetic import make_synthetic
from membrane_py.volumes.tiles import tile_path

SHAPE = (4, 300, 400)  # 3 x 4 tiles of 128 px, with partial edge tiles
SPEC = f"synthetic:{SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]}"
TILE, MARGIN = 128, 32
ALL_TILES = {(z, r, c) for z in range(4) for r in range(3) for c in range(4)}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with loading_server(SPEC, tmp_path_factory) as srv:
        yield srv


@pytest.fixture(scope="module")
def em():
    return make_synthetic(SHAPE, 0).em  # what the server serves


def job_for(server, checkpoint, out, **kw) -> PredictJob:
    base = dict(checkpoint=str(checkpoint), source=f"vast://{server.host}:{server.port}",
                out=str(out), tile=TILE, chunk=[2, 256, 256], margin=MARGIN)
    return PredictJob(**{**base, **kw})


def mosaic(folder, mip: int, shape: tuple[int, int, int], tile: int = TILE) -> np.ndarray:
    """The tiles of one mip level assembled into a (z, y, x) volume (missing tiles = 0)."""
    out = np.zeros(shape, np.uint8)
    for z in range(shape[0]):
        for r in range(-(-shape[1] // tile)):
            for c in range(-(-shape[2] // tile)):
                img = read_png(tile_path(folder, mip, z, r, c))
                if img is not None:
                    part = out[z, r * tile:(r + 1) * tile, c * tile:(c + 1) * tile]
                    part[:] = img[:part.shape[0], :part.shape[1]]
    return out


def without_vast_record(files: dict[str, bytes]) -> dict[str, bytes]:
    """The reference run was loaded into VAST, which the folder records (not tile data)."""
    assert RECORD_FILE in files
    return {k: v for k, v in files.items() if k != RECORD_FILE}


@pytest.fixture(scope="module")
def reference(server, checkpoint, tmp_path_factory):
    """An uninterrupted whole-volume run with every output, loaded into the server."""
    out = tmp_path_factory.mktemp("reference")
    events = []
    result = run_prediction(job_for(server, checkpoint, out, outputs=["probability", "classes"],
                                    zarr=True, load_in_vast=True), progress=events.append)
    return out, result, events


def test_whole_volume_tiles_values_and_progress(reference, checkpoint, em):
    out, result, events = reference
    assert result.tiles_total == result.tiles_written == len(ALL_TILES)
    assert result.tiles_blank == result.tiles_resumed == 0
    for name in ("probability", "classes"):
        assert tile_keys(out / name, 0) == ALL_TILES
    edge = read_png(tile_path(out / "probability", 0, 3, 2, 3))
    assert edge.shape == (TILE, TILE) and edge.dtype == np.uint8
    assert not edge[300 - 2 * TILE:].any() and not edge[:, 400 - 3 * TILE:].any()  # padding
    prob = mosaic(out / "probability", 0, SHAPE)
    assert prob.min() >= 1  # 0 only means "missing"
    # chunked prediction with context equals whole-section prediction (the tiny net sees
    # less than the 32 px margin), up to float rounding; it is membrane, class 2
    whole = load_predictor(checkpoint, tile=1024, margin=MARGIN).predict(em)
    assert np.abs(prob.astype(int) - probability_to_u8(whole[:, 1])).max() <= 1
    classes = mosaic(out / "classes", 0, SHAPE)
    assert set(np.unique(classes)) <= {128, 255}
    assert np.mean(classes == classes_to_tile_u8(whole.argmax(1) + 1, 2)) > 0.999
    last = [e for e in events if e.kind == "progress"][-1]
    assert (last.task, last.done, last.total) == ("predict", 48, 48)
    assert "48/48 tiles" in last.message and "MB/s" in last.message and "ETA" in last.message


def test_descriptor_pyramid_and_zarr(reference):
    out, result, _ = reference
    assert [p.name for p in result.descriptors] == ["probability.vsvi", "classes.vsvi"]
    raw = json.loads(result.descriptors[0].read_text())  # valid JSON
    v = read_vsvi(result.descriptors[0])
    assert (v.source_min_s, v.source_max_s, v.offset_z) == (0, 3, 0)
    assert (v.source_min_r, v.source_max_r, v.source_min_c, v.source_max_c) == (0, 2, 0, 3)
    assert (v.source_min_m, v.source_max_m) == (1, 2)  # 400 -> 200 -> 100 px fits one tile
    assert (v.target_data_size_x, v.target_data_size_y, v.target_data_size_z) == (400, 300, 4)
    assert (v.target_voxel_size_x_nm, v.target_voxel_size_z_nm) == (8.0, 40.0)
    assert v.source_tile_size_x == TILE and v.source_bytes_per_pixel == 1
    assert raw["TargetLayerName"] == "membrane prediction"
    assert raw["SourceFileNameTemplate"] == "./probability/mip0/Sect_%06d/sect_%06d_r%d_c%d.png"
    assert read_vsvi(result.descriptors[1]).target_layer_name == "membrane prediction (classes)"

    prob0 = mosaic(out / "probability", 0, SHAPE)
    prob1 = mosaic(out / "probability", 1, (4, 150, 200))
    np.testing.assert_array_equal(prob1, downsample_xy(prob0, 2, labels=False))
    cls1 = mosaic(out / "classes", 1, (4, 150, 200))
    np.testing.assert_array_equal(cls1, downsample_xy(mosaic(out / "classes", 0, SHAPE), 2, True))
    assert tile_keys(out / "probability", 2) == {(z, 0, 0) for z in range(4)}

    group = zarr.open_group(str(result.zarr[0]), mode="r")
    ms = group.attrs["multiscales"][0]
    assert ms["version"] == "0.4" and [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    assert [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]] == \
        [[40.0, 8.0, 8.0], [40.0, 16.0, 16.0], [40.0, 32.0, 32.0]]
    np.testing.assert_array_equal(group["0"][:], prob0)
    np.testing.assert_array_equal(group["1"][:], prob1)


def test_loaded_layer_reads_back_what_is_on_disk(reference, server):
    out, result, _ = reference
    with VastClient(server.host, server.port) as client:
        names = client.get_layer_names()
        assert [names[k] for k in result.layers] == ["membrane prediction",
                                                     "membrane prediction (classes)"]
        for layer, name in zip(result.layers, ("probability", "classes"), strict=True):
            np.testing.assert_array_equal(client.get_em_image(layer, Box.full(SHAPE)),
                                          mosaic(out / name, 0, SHAPE))
            np.testing.assert_array_equal(client.get_em_image(layer, Box.full((4, 150, 200)), 1),
                                          mosaic(out / name, 1, (4, 150, 200)))


def test_layer_fills_in_while_the_run_continues(server, checkpoint, tmp_path):
    early = []
    with VastClient(server.host, server.port) as viewer:

        def look(event) -> None:  # a VAST user scrolling through the layer mid-run
            if event.data.get("written") and not early and event.done < event.total:
                layer = viewer.get_layer_names().index("on the fly")
                early.append(viewer.get_em_image(layer, Box.full(SHAPE)))

        result = run_prediction(job_for(server, checkpoint, tmp_path, layer_name="on the fly",
                                         load_in_vast=True), progress=look)
        final = viewer.get_em_image(result.layers[0], Box.full(SHAPE))
    assert 0 < np.count_nonzero(early[0]) < early[0].size  # some tiles shown, the rest black
    np.testing.assert_array_equal(final, mosaic(tmp_path / "probability", 0, SHAPE))
    assert final.min() >= 1  # tiles first read as missing were not remembered as missing


def test_rerun_skips_finished_tiles(reference, server, checkpoint):
    out, _, _ = reference
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    again = run_prediction(job_for(server, checkpoint, out, outputs=["probability", "classes"],
                                   zarr=True))
    assert again.tiles_resumed == 48 and again.tiles_written == again.pyramid_tiles == 0
    assert again.megabytes_read == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == before


def test_box_at_mip1_writes_only_its_tiles(server, checkpoint, tmp_path):
    box = [100, 299, 40, 60, 2, 3]  # x 100..299 -> 50..149 at mip 1, y 40..60 -> 20..30
    job = job_for(server, checkpoint, tmp_path, mip=1, region=RegionSpec(mode="box", box=box),
                  pyramid=False)
    result = run_prediction(job)
    assert tile_keys(tmp_path / "probability", 1) == {(2, 0, 0), (2, 0, 1), (3, 0, 0), (3, 0, 1)}
    assert not (tmp_path / "probability" / "mip0").exists()
    v = read_vsvi(result.descriptors[0])
    assert (v.source_min_s, v.source_max_s, v.source_min_m, v.source_max_m) == (0, 3, 1, 1)
    assert (v.target_data_size_x, v.target_data_size_y) == (400, 300)  # always mip-0 sizes


def test_cancel_mid_run_then_resume_is_identical(reference, server, checkpoint, tmp_path):
    token = CancelToken()

    def cancel_after_first_write(event) -> None:
        if event.data.get("written", 0) > 0:
            token.cancel()

    job = job_for(server, checkpoint, tmp_path, outputs=["probability", "classes"], zarr=True)
    with pytest.raises(Cancelled):
        run_prediction(job, progress=cancel_after_first_write, cancel=token)
    assert 0 < len(tile_keys(tmp_path / "probability", 0)) < len(ALL_TILES)
    result = run_prediction(job)
    assert result.tiles_resumed > 0 and result.tiles_written < len(ALL_TILES)
    assert folder_bytes(tmp_path) == without_vast_record(folder_bytes(reference[0]))


def test_killed_cli_process_restarts_byte_identical(reference, server, checkpoint, tmp_path):
    cmd = [*CLI, "predict",
           str(checkpoint), "--source", f"vast://{server.host}:{server.port}", "--out",
           str(tmp_path), "--outputs", "probability,classes", "--zarr", "--tile", str(TILE),
           "--chunk", "256,256,2", "--margin", str(MARGIN)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(tile_keys(tmp_path / "classes", 0)) < 8 and proc.poll() is None:  # one chunk
        assert time.monotonic() < deadline, "membrane predict wrote no chunk in 120 s"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    assert len(tile_keys(tmp_path / "probability", 0)) < len(ALL_TILES)  # really interrupted
    # a chunk zarr was writing when the kill came (its temporary), removed on restart
    chunks = tmp_path / "probability.zarr" / "0" / "0" / "0"
    chunks.mkdir(parents=True, exist_ok=True)
    (chunks / "1.0123abcd.partial").write_bytes(b"")

    job = job_for(server, checkpoint, tmp_path, outputs=["probability", "classes"], zarr=True)
    result = run_prediction(job)
    assert result.tiles_resumed >= 8 and result.tiles_written < len(ALL_TILES)
    assert folder_bytes(tmp_path) == without_vast_record(folder_bytes(reference[0]))


def test_blank_tiles_are_skipped_and_multi_class_outputs(tmp_path, em):
    vol = em[:2].copy()
    vol[:, :, 256:] = 0  # columns 2 and 3 are empty
    vol[:, 128:256, :128] = 7  # a uniform tile
    tifffile.imwrite(tmp_path / "em.tif", vol)
    assert entropy_bits(vol[0, 128:256, :128]) == 0 and is_blank(vol[0, :, 300:], 1.0)
    ckpt = tiny_checkpoint(tmp_path / "three.pt", ["cyto", "membrane", "mito"])
    job = PredictJob(checkpoint=str(ckpt), source=str(tmp_path / "em.tif"), out=str(tmp_path / "o"),
                     outputs=["probability", "rgb", "per_class", "classes"], tile=TILE,
                     chunk=[2, 256, 256], margin=MARGIN)
    result = run_prediction(job)
    blank = {(z, r, c) for z in (0, 1) for r in range(3) for c in (2, 3)} | {(0, 1, 0), (1, 1, 0)}
    written = {(z, r, c) for z in (0, 1) for r in range(3) for c in range(4)} - blank
    assert (result.tiles_blank, result.tiles_written) == (len(blank), len(written))
    folders = ["probability", "rgb", "class1_cyto", "class2_membrane", "class3_mito", "classes"]
    for name in folders:
        assert tile_keys(tmp_path / "o" / name, 0) == written, name
    rgb = read_png(tile_path(tmp_path / "o" / "rgb", 0, 0, 0, 0))
    assert rgb.shape == (TILE, TILE, 3) and rgb.min() >= 1
    np.testing.assert_array_equal(rgb[..., 1],
                                  read_png(tile_path(tmp_path / "o" / "class2_membrane", 0, 0, 0,
                                                     0)))
    assert read_vsvi(tmp_path / "o" / "rgb.vsvi").source_bytes_per_pixel == 3
    codes = set(np.unique(read_png(tile_path(tmp_path / "o" / "classes", 0, 0, 0, 0))))
    assert codes <= {85, 170, 255}
    again = run_prediction(job)  # blank tiles stay unwritten and are not predicted again
    assert (again.tiles_blank, again.tiles_resumed, again.tiles_written) == \
        (len(blank), len(written), 0)


def test_job_spec_round_trip_and_clear_errors(tmp_path, checkpoint):
    job = PredictJob(checkpoint="m.pt", source="synthetic:2x64x64", region=RegionSpec(
        mode="nodes", size_xy=512, depth=4, points=[[1, 2, 3]]), outputs=["classes"], zarr=True)
    assert PredictJob.from_json(job.to_json()) == job
    assert PredictJob.from_json(job.to_json()).region.points == [[1, 2, 3]]
    assert job.vast_address is None
    assert PredictJob(checkpoint="m.pt", source="vast").vast_address == ("127.0.0.1", 22081)
    bad = [({"outputs": ["probabilities"]}, "outputs must be"),
           ({"chunk": [16, 1000, 1024]}, "multiples of the tile size"),
           ({"source": "vast://host:port"}, "bad VAST address"),
           ({"vast": "localhost:22081"}, "vast must be a VAST address"),
           ({"backend": "tensorflow"}, "backend must be")]
    for change, message in bad:
        with pytest.raises(ValueError, match=message):
            PredictJob(checkpoint="m.pt", **change)
    with pytest.raises(ValueError, match="unknown key .treshold."):
        PredictJob.from_dict({"checkpoint": "m.pt", "treshold": 0.5})
    source = dict(checkpoint=str(checkpoint), source="synthetic:2x64x64", out=str(tmp_path))
    with pytest.raises(ValueError, match="load_in_vast needs VAST"):
        run_prediction(PredictJob(**source, load_in_vast=True))
    with pytest.raises(ValueError, match="mip 9 does not exist"):
        run_prediction(PredictJob(**source, mip=9))
    with pytest.raises(ValueError, match="exactly 3 classes"):
        run_prediction(PredictJob(**source, outputs=["rgb"]))
    with pytest.raises(ValueError, match="not one of the network's classes"):
        run_prediction(PredictJob(**source, prob_class="mito"))
