"""Membrane-constrained fill: it stays inside the seed's cell (synthetic ground truth), in 2D
and 3D, and is painted as one segment through a real mock VAST server."""

import numpy as np
import pytest
import tifffile

from membrane_py.edit.fill import FillJob, run_fill
from membrane_py.events import JobWarning
from membrane_py.geometry import Box
from membrane_py.segment.fill import fill_region
from membrane_py.segment.instances import membrane_map_from_labels
from membrane_py.vastapi.client import VastClient
from membrane_py.volumes.synthetic import make_synthetic


@pytest.fixture(scope="module")
def truth():
    s = make_synthetic((8, 256, 256), seed=0)  # the volume the vast_server fixture serves
    return s, membrane_map_from_labels(s.instances, seed=5)


@pytest.fixture(scope="module")
def prob_file(tmp_path_factory, truth):
    path = tmp_path_factory.mktemp("fill") / "prob.tif"
    tifffile.imwrite(path, (1 + truth[1] * 254).astype(np.uint8), photometric="minisblack")
    return str(path)


def cell_interior_seed(s, z: int) -> tuple[int, int, int]:
    """(x, y, z) deep inside the largest cell of section z."""
    from scipy import ndimage as ndi

    ids, counts = np.unique(s.instances[z], return_counts=True)
    cell = s.instances[z] == ids[np.argmax(counts)]
    depth = ndi.distance_transform_edt(cell)
    y, x = np.unravel_index(np.argmax(depth), depth.shape)
    return int(x), int(y), z


def test_fill_stops_at_membranes(truth):
    s, prob = truth
    x, y, z = cell_interior_seed(s, 3)
    mask = fill_region(prob[3], (y, x), 0.5)
    cell = s.instances[3] == s.instances[3, y, x]
    assert mask.sum() > 0.7 * cell.sum()  # most of the cell ...
    assert not (mask & ~cell).any()  # ... and nothing outside it
    with pytest.raises(ValueError, match="membrane"):
        on_membrane = np.argwhere(prob[3] > 0.9)[0]
        fill_region(prob[3], tuple(on_membrane), 0.5)


def test_fill_in_vast_2d_and_3d(vast_server, truth, prob_file):
    s, _ = truth
    vast = f"vast://{vast_server.host}:{vast_server.port}"
    x, y, z = cell_interior_seed(s, 4)
    with VastClient(vast_server.host, vast_server.port) as c:
        flat = run_fill(FillJob(prob_file, vast=vast, seed=(x, y, z)), client=c)
        c.set_selected_api_layer(flat.layer)
        seg = c.get_seg_image(Box(0, 8, 0, 256, 0, 256))
        assert np.unique(seg).tolist() == [0, flat.segment]
        assert np.count_nonzero(seg) == flat.voxels == flat.voxels_written
        assert seg[z, y, x] == flat.segment and not seg[[k for k in range(8) if k != z]].any()
        assert not (seg[z] & (s.instances[z] != s.instances[z, y, x])).any()
        assert c.get_all_segment_names()[flat.segment] == f"fill at {x},{y},{z}"
        # 3D from the view centre, into the same fills layer; the 2D fill is kept
        c.set_view_coordinates(x, y, z)
        deep = run_fill(FillJob(prob_file, vast=vast, three_d=True, max_depth=8, name="cell"),
                        client=c)
        assert deep.layer == flat.layer and deep.segment != flat.segment
        c.set_selected_api_layer(deep.layer)
        seg = c.get_seg_image(Box(0, 8, 0, 256, 0, 256))
        assert seg[z, y, x] == flat.segment  # not overwritten
        assert len(np.unique(np.nonzero(seg == deep.segment)[0])) >= 3  # several sections
        # a small box: the fill reaches its border and says so
        with pytest.warns(JobWarning):
            small = run_fill(FillJob(prob_file, vast=vast, seed=(x, y, 0), max_size=16,
                                     save=False), client=c)
        assert small.touches_border and small.box.shape == (1, 16, 16)
