"""Fixtures shared by the whole test suite: shared real data and a mock VAST server process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SMALL_SYNTHETIC = "synthetic:8x256x256"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """<repo>/../shared/data, or skip when the shared test data are not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not present: real-data tests need the shared test data "
                    "next to the project")
    return SHARED_DATA


@pytest.fixture(scope="module")
def vast_server(tmp_path_factory):
    """A mock VAST server process over a small synthetic volume (with its instance labels)."""
    from mock_vast_server.launch import start_server

    with start_server(SMALL_SYNTHETIC, state_dir=tmp_path_factory.mktemp("vast_state")) as srv:
        yield srv


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny randomly initialised U-Net saved as a real checkpoint (prediction tests)."""
    from tests.predict_support import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")
