"""`membrane serve` and `python -m mock_vast_server`: one-line errors with a fix and a
non-zero exit for every start-up failure, the loopback guard, and voxel sizes in x y z."""

from __future__ import annotations

import socket
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from membrane_py.cli import app
from membrane_py.vastapi.client import VastClient
from mock_vast_server.launch import start_server

runner = CliRunner()
TINY = "synthetic:2x64x64"


def _serve(*args: str):
    return runner.invoke(app, ["serve", *args])


def _one_error_line(result, *words: str) -> None:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith("membrane serve: error: ")
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_missing_volume_fails_before_creating_the_state_dir(tmp_path):
    state = tmp_path / "state"
    _one_error_line(_serve("--volume", str(tmp_path / "nope.tif"), "--state", str(state),
                           "--port", "0"), "nope.tif", "not found", "accepted forms")
    assert not state.exists()


def test_bad_volume_spec(tmp_path):
    _one_error_line(_serve("--volume", "synthetic:abc", "--state", str(tmp_path / "s"),
                           "--port", "0"), "synthetic:abc", "accepted forms")


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_port_out_of_range(tmp_path, port):
    _one_error_line(_serve("--volume", TINY, "--port", port, "--state", str(tmp_path / "s")),
                    f"port {port}", "0..65535")


def test_port_in_use_fails_before_creating_the_state_dir(tmp_path):
    state = tmp_path / "state"
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        _one_error_line(_serve("--volume", TINY, "--port", str(port), "--state", str(state)),
                        "already in use", "--port")
    assert not state.exists()


def test_remote_host_needs_allow_remote(tmp_path):
    _one_error_line(_serve("--volume", TINY, "--host", "0.0.0.0", "--port", "0",
                           "--state", str(tmp_path / "s")), "0.0.0.0", "--allow-remote",
                    "no authentication")


def test_allow_remote_warns(tmp_path):
    # the bad port stops it before anything listens on a public interface
    r = _serve("--volume", TINY, "--host", "0.0.0.0", "--allow-remote", "--port", "70000",
               "--state", str(tmp_path / "s"))
    assert r.exit_code == 2
    assert "warning: serving on 0.0.0.0 without authentication" in r.output
    assert "port 70000 is out of range" in r.output


def test_bad_limit_is_one_line(tmp_path):
    _one_error_line(_serve("--volume", TINY, "--max-connections", "0", "--port", "0",
                           "--state", str(tmp_path / "s")), "max_connections")


def test_module_entry_point_reports_the_same_way(tmp_path):
    p = subprocess.run([sys.executable, "-m", "mock_vast_server", "--volume",
                        str(tmp_path / "nope"), "--port", "0", "--state", str(tmp_path / "s")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "volume not found" in p.stderr
    assert not (tmp_path / "s").exists()


def test_voxel_size_is_given_in_vast_order_x_y_z(tmp_path):
    tif = tmp_path / "em.tif"
    tifffile.imwrite(tif, np.zeros((3, 32, 48), np.uint8), photometric="minisblack")
    with start_server(str(tif), state_dir=tmp_path / "state", voxel_size=(30.0, 5.0, 4.0)) as srv:
        assert "--voxel-size 4.0 5.0 30.0" in " ".join(srv.proc.args)
        with VastClient(srv.host, srv.port) as c:
            assert c.get_info().voxel_size == (30.0, 5.0, 4.0)  # (z, y, x)
