"""Prediction on real EM: ISBI 2012 served by the mock VAST server, with a network trained
here for a few iterations, written in mEMbrain's 1024^2 layout (skipped without the data)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from predict_support import TINY, tile_keys

from membrane_py.augment.dataset import OnTheFlyPatchDataset
from membrane_py.augment.labels import binary_to_classes
from membrane_py.augment.preprocess import PreprocessConfig
from membrane_py.codes import read_png
from membrane_py.geometry import Box
from membrane_py.predict.job import PredictJob, RegionSpec
from membrane_py.predict.runner import run_prediction
from membrane_py.train.config import TrainJob
from membrane_py.train.trainer import train_model
from membrane_py.vastapi.client import VastClient
from membrane_py.vastapi.descriptors import read_vsvi
from membrane_py.volumes.tiles import tile_path
from mock_vast_server.launch import start_server

pytestmark = pytest.mark.realdata


def test_isbi2012_prediction_through_the_server(shared_data, tmp_path):
    root = shared_data / "isbi2012"
    images = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
              for p in sorted((root / "images").glob("*.png"))]
    labels = [binary_to_classes(cv2.imread(str(p), cv2.IMREAD_UNCHANGED))
              for p in sorted((root / "labels").glob("*.png"))]
    patches = OnTheFlyPatchDataset(images[:16], labels[:16], 64, 8 * 10, PreprocessConfig(),
                                   rotate=False)  # 10 iterations
    cfg = TrainJob(out_dir=str(tmp_path / "model"), name="isbi", depth=TINY.depth,
                      base_filters=TINY.base_filters, norm="batch", patch_size=64, epochs=1,
                      batch_size=8, lr=1e-2, voxel_size=[50.0, 4.0, 4.0])
    checkpoint = train_model(patches, None, cfg, n_classes=2).best_path

    with start_server(str(root / "images"), voxel_size=(50, 4, 4),
                      state_dir=tmp_path / "state", allow_load=[tmp_path]) as srv:
        job = PredictJob(checkpoint=str(checkpoint), source=f"vast://{srv.host}:{srv.port}",
                         out=str(tmp_path / "out"), layer_name="isbi membranes",
                         region=RegionSpec(mode="box", box=[0, 511, 0, 511, 16, 19]),
                         load_in_vast=True)
        result = run_prediction(job)
        with VastClient(srv.host, srv.port) as client:
            served = client.get_em_image(result.layers[0], Box(16, 20, 0, 512, 0, 512))

    out = tmp_path / "out" / "probability"
    assert tile_keys(out, 0) == {(z, 0, 0) for z in range(16, 20)}  # one 1024^2 tile each
    assert result.tiles_written == 4 and result.tiles_blank == 0
    tiles = np.stack([read_png(tile_path(out, 0, z, 0, 0)) for z in range(16, 20)])
    assert tiles.shape == (4, 1024, 1024) and tiles.dtype == np.uint8
    assert tiles[:, :512, :512].min() >= 1 and not tiles[:, 512:].any()
    assert not tiles[:, :, 512:].any()  # zero padding outside the 512^2 sections
    np.testing.assert_array_equal(served, tiles[:, :512, :512])

    membrane = np.stack(labels[16:]) == 2
    prob = tiles[:, :512, :512].astype(float)
    assert prob[membrane].mean() > prob[~membrane].mean() + 10  # it learnt something

    v = read_vsvi(result.descriptors[0])
    assert (v.source_min_s, v.source_max_s, v.offset_z) == (0, 19, 0)
    assert (v.source_max_r, v.source_max_c, v.source_tile_size_x) == (0, 0, 1024)
    assert (v.target_data_size_x, v.target_data_size_y, v.target_data_size_z) == (512, 512, 20)
    assert (v.target_voxel_size_x_nm, v.target_voxel_size_z_nm) == (4.0, 50.0)
    assert (v.source_min_m, v.source_max_m) == (0, 0)  # 512 px fit one tile: no pyramid
    assert v.target_layer_name == "isbi membranes"
