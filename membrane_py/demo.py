"""`make demo`: the main job end to end on the bundled synthetic volume.

Today the job is the VAST round trip every later step stands on: serve the synthetic volume
over the VAST protocol, read it chunk by chunk through the client (16 sections x 1024^2,
prefetching), write mEMbrain-layout tiles plus a `.vsvi`, have the server load that
descriptor as a new layer, and read it back to prove the bytes survived.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from membrane_py.geometry import Box
from membrane_py.progress import Progress, ProgressCallback, report


@dataclass
class DemoConfig:
    """What the demo runs on and where it writes."""

    out: Path = Path("demo_output")
    volume: str = "synthetic"
    chunk: tuple[int, int, int] = (16, 1024, 1024)


@dataclass
class DemoResult:
    tiles_dir: Path
    descriptor: Path
    layer_nr: int
    n_tiles: int
    megabytes: float
    read_mb_s: float
    identical: bool


def run_demo(cfg: DemoConfig, progress: ProgressCallback | None = None) -> DemoResult:
    """Serve, read through the client, write tiles and descriptor, load it back, compare."""
    from membrane_py.vastapi.chunks import count_chunks, iter_chunks
    from membrane_py.vastapi.client import VastClient
    from membrane_py.volumes.tiles import TileWriter
    from membrane_py.volumes.vast import VastVolume
    from mock_vast_server.launch import start_server

    out = cfg.out.resolve()
    tiles_dir = out / "em_tiles"
    with start_server(volume=cfg.volume, state_dir=out / "server_state") as server, \
            VastClient(server.host, server.port) as client:
        em = VastVolume(client, layer=0)
        region = Box.full(em.shape)
        writer = TileWriter(tiles_dir, em.shape, mip=0)
        total = count_chunks(region, cfg.chunk)
        t0 = time.perf_counter()
        nbytes = 0
        chunks = iter_chunks(lambda b: em.read(b, 0), region, em.shape, chunk=cfg.chunk,
                             margin=(0, 0, 0))
        for i, chunk in enumerate(chunks, 1):
            data = chunk.core_data()
            nbytes += data.nbytes
            writer.write_block(chunk.core, data)
            report(progress, Progress("demo: read from server, write tiles", i, total))
        seconds = time.perf_counter() - t0
        descriptor = writer.write_descriptor(
            tiles_dir / "synthetic_em.vsvi", em.voxel_size, "membrane-py demo (round trip)")
        layer_nr = client.load_layer(str(descriptor))
        identical = all(
            np.array_equal(client.get_em_image(layer_nr, chunk.core), chunk.core_data())
            for chunk in iter_chunks(lambda b: em.read(b, 0), region, em.shape,
                                     chunk=cfg.chunk, margin=(0, 0, 0))
        )
    n_tiles = sum(1 for _ in tiles_dir.rglob("*.png"))
    return DemoResult(tiles_dir, descriptor, layer_nr, n_tiles, nbytes / 1e6,
                      nbytes / 1e6 / max(seconds, 1e-9), identical)
