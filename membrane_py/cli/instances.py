"""Instance segmentation and editable paint (`membrane instances`, `membrane paint`,
`membrane fill`).

Probability inputs are any volume form (image folder, .tif, .h5, .zarr, a .vsvi of
prediction tiles) or a VAST address ``vast://HOST:PORT`` plus a layer number (e.g. a
prediction .vsvi loaded in VAST). Boxes are ``minx,maxx,miny,maxy,minz,maxz``: inclusive
mip-0 voxels, as VAST shows them; regions are those of `membrane predict`.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from membrane_py.cli.options import (
    BOX,
    CLIP,
    POINT,
    SAVE_JOB,
    VOXEL_SIZE,
    box_option,
    floats_option,
    ints_option,
    points_option,
    spec_or_exit,
)
from membrane_py.cli.render import execute

H = typer.Option(0.05, help="h-minima depth (0..1): larger = fewer, larger segments")
THRESHOLD = typer.Option(0.71, help="pixels with membrane probability above become 0")
MODEL_THRESHOLD = typer.Option(
    None, "--threshold", help="2d/3d/watershed3d: pixels with membrane probability above become "
    "0 (default: the threshold the network chose in training, recorded by membrane predict "
    "next to the probabilities, else 0.71)")
MIN_SIZE = typer.Option(70, help="2D segments smaller than this (px) are removed")
SIGMA = typer.Option(0.0, help="Gaussian smoothing of the map before seeding (0 = none)")
WINDOW = typer.Option(2048, help="section windows: core side (px)")
HALO = typer.Option(256, help="section windows: context on each side (px)")
OVERLAP_PX = typer.Option(20, help="3D linking: minimum shared pixels")
OVERLAP_FRACTION = typer.Option(0.5, help="3D linking: minimum overlap / smaller segment")
MIP = typer.Option(0, min=0, help="mip level to read the probabilities at")
INVERT = typer.Option(False, help="the maps show membrane dark")
VAST = typer.Option("vast://127.0.0.1:22081", help="the VAST to paint into (vast://HOST:PORT)")
SOURCE_LAYER = typer.Option(0, help="image layer to read when SOURCE is a VAST address")
LAYER = typer.Option(None, help="target segmentation layer number (default: a new layer)")
SAVE = typer.Option(True, help="save the layer (SAVELAYER) at the end")
SAVE_PATH = typer.Option("", help="file name for SAVELAYER (default: VAST's own)")
OVERWRITE = typer.Option(False, help="also paint over voxels that are already painted")
MERGE_THRESHOLD = typer.Option(
    0.5, help="agglomerate/affinities: regions merge while the boundary between them scores "
    "below this (0..1; higher = fewer splits, more merges)")
SCORING = typer.Option("mean", help="agglomerate/affinities: boundary score, mean or quantile "
                       "(of the affinities across the contact)")
QUANTILE = typer.Option(50, help="--scoring quantile: the percentile used")
MIN_SIZE_AGGLOMERATE = typer.Option(100, help="agglomerate/affinities: objects smaller "
                                    "(voxels) removed")


def _instance_config(h: float, threshold: float | None, min_size: int, sigma: float,
                     window: int, halo: int, weights: str = "0.7,0.3,0"):
    """The InstanceConfig of the options; ``threshold`` None: the default (0.71)."""
    from membrane_py.segment.instances import InstanceConfig

    w = tuple(floats_option(weights, "--weights"))
    if threshold is None:
        threshold = InstanceConfig.membrane_threshold
    return spec_or_exit(InstanceConfig, h=h, membrane_threshold=threshold, min_size=min_size,
                        sigma=sigma, window=window, halo=halo, weights=w)


def _knobs(threshold: float, scoring: str, quantile: int, min_size: int):
    from membrane_py.segment.affinity import AgglomerationKnobs

    return spec_or_exit(AgglomerationKnobs, threshold=threshold, scoring=scoring,
                        quantile=quantile, min_size=min_size)


def _agglomeration(px: int, fraction: float):
    from membrane_py.segment.agglomerate import AgglomerationConfig

    return spec_or_exit(AgglomerationConfig, min_overlap_px=px, min_overlap_fraction=fraction)


def instances(
    sources: list[str] = typer.Argument(..., help="membrane probability volume(s) or VAST "
                                        "addresses; several are combined with --weights"),
    output: Path = typer.Option(..., "--output", "-o", help="a .zarr directory, a .tif file, "
                                "or a folder for RGB tiles with a .vsvi"),
    layer: list[int] = typer.Option(None, help="VAST image layer of each VAST source, in order"),
    mode: str = typer.Option("auto", help="auto (by voxel size: see docs/instances.md), 2d "
                             "(per section), 3d (2D segments linked across sections), "
                             "watershed3d, agglomerate (fragments merged up to "
                             "--merge-threshold) or affinities (three sources: z, y, x "
                             "affinities)"),
    box: str = BOX,
    clip: bool = CLIP,
    mip: int = MIP,
    invert: bool = INVERT,
    colors: str = typer.Option("ids", help="tiles: ids (id = R*65536+G*256+B, for import) or "
                               "palette (fixed random colours, for viewing)"),
    weights: str = typer.Option("0.7,0.3,0", help="combining runs: weights of max,min,mean"),
    h: float = H,
    threshold: float = MODEL_THRESHOLD,
    min_size: int = MIN_SIZE,
    sigma: float = SIGMA,
    window: int = WINDOW,
    halo: int = HALO,
    min_overlap_px: int = OVERLAP_PX,
    min_overlap_fraction: float = OVERLAP_FRACTION,
    min_size_3d: int = typer.Option(500, help="watershed3d: objects smaller (voxels) removed"),
    voxel_size: tuple[float, float, float] = VOXEL_SIZE,
    merge_threshold: float = MERGE_THRESHOLD,
    scoring: str = SCORING,
    quantile: int = QUANTILE,
    min_size_agglomerate: int = MIN_SIZE_AGGLOMERATE,
    save_job: Path = SAVE_JOB,
) -> None:
    """Instance segmentation of membrane probabilities -> zarr, TIFF or RGB tiles + .vsvi."""
    from membrane_py.edit.instances import InstanceJob

    knobs = _knobs(merge_threshold, scoring, quantile, min_size_agglomerate)
    execute(spec_or_exit(
        InstanceJob, sources=list(sources), output=str(output), layers=list(layer or [0]),
        mode=mode, box=box_option(box), clip=clip, mip=mip, invert=invert, colors=colors,
        instances=_instance_config(h, threshold, min_size, sigma, window, halo, weights),
        model_threshold=threshold is None,
        agglomeration=_agglomeration(min_overlap_px, min_overlap_fraction), affinity=knobs,
        min_size_3d=min_size_3d, voxel_size=list(voxel_size) if voxel_size else None), save_job)


def paint(
    source: str = typer.Argument(..., help="probability volume, label volume (--mode labels) "
                                 "or the VAST address (then --source-layer is read)"),
    source_layer: int = SOURCE_LAYER,
    vast: str = VAST,
    mode: str = typer.Option("instances2d", help="mask, instances2d, instances3d, agglomerate "
                             "(fragments merged up to --merge-threshold) or labels"),
    region: str = typer.Option(None, help="volume, box, view (cube around VAST's view), anchors "
                               "(cube per skeleton anchor) or nodes (per skeleton node); "
                               "default: box when --box is given, else volume"),
    box: str = BOX,
    clip: bool = CLIP,
    size: int = typer.Option(1024, help="cube width in x and y (mip-0 px) for view/anchors/nodes"),
    depth: int = typer.Option(1, help="cube depth in sections for view/anchors/nodes"),
    point: list[str] = POINT,
    anno_layer: int = typer.Option(None, help="VAST annotation layer with the skeletons "
                                   "(default: the selected one)"),
    mip: int = MIP,
    mask_threshold: float = typer.Option(0.5, help="mask: probability >= this is painted"),
    class_name: str = typer.Option("membrane", help="mask: segment name"),
    invert: bool = INVERT,
    layer: int = LAYER,
    layer_name: str = typer.Option("membrane-py predictions", help="name of a new layer"),
    overwrite: bool = OVERWRITE,
    save: bool = SAVE,
    save_path: str = SAVE_PATH,
    h: float = H,
    threshold: float = THRESHOLD,
    min_size: int = MIN_SIZE,
    sigma: float = SIGMA,
    window: int = WINDOW,
    halo: int = HALO,
    min_overlap_px: int = OVERLAP_PX,
    min_overlap_fraction: float = OVERLAP_FRACTION,
    merge_threshold: float = MERGE_THRESHOLD,
    scoring: str = SCORING,
    quantile: int = QUANTILE,
    min_size_agglomerate: int = MIN_SIZE_AGGLOMERATE,
    mapping_out: Path = typer.Option(None, help="write source id -> VAST segment id as JSON"),
    save_job: Path = SAVE_JOB,
) -> None:
    """Paint predictions into a VAST segmentation layer; existing paint is kept."""
    from membrane_py.edit.paint import PaintJob
    from membrane_py.predict.job import RegionSpec

    regions = spec_or_exit(RegionSpec, mode=region or ("box" if box else "volume"),
                           box=box_option(box), size_xy=size, depth=depth,
                           anno_layer=anno_layer, points=points_option(point), clip=clip)
    result = execute(spec_or_exit(
        PaintJob, source=source, source_layer=source_layer, vast=vast, mode=mode,
        region=regions, mip=mip, threshold=mask_threshold, class_name=class_name, invert=invert,
        layer=layer, layer_name=layer_name, overwrite=overwrite, save=save, save_path=save_path,
        instances=_instance_config(h, threshold, min_size, sigma, window, halo),
        agglomeration=_agglomeration(min_overlap_px, min_overlap_fraction),
        affinity=_knobs(merge_threshold, scoring, quantile, min_size_agglomerate)), save_job)
    if mapping_out is not None:
        from membrane_py.atomic import write_text_atomic

        write_text_atomic(mapping_out, json.dumps({str(k): v for k, v in result.mapping.items()}))


def fill(
    source: str = typer.Argument(..., help="probability volume or the VAST address (then "
                                 "--source-layer is read)"),
    source_layer: int = SOURCE_LAYER,
    vast: str = VAST,
    seed: str = typer.Option(None, help="x,y,z at mip 0 (default: VAST's view centre)"),
    threshold: float = typer.Option(0.5, help="fill where membrane probability is below"),
    three_d: bool = typer.Option(False, "--3d/--2d", help="fill in 3D or in the seed section"),
    max_size: int = typer.Option(1024, help="box width around the seed (mip-0 px)"),
    max_depth: int = typer.Option(32, help="--3d: box depth in sections"),
    mip: int = MIP,
    invert: bool = INVERT,
    name: str = typer.Option("", help="segment name (default: 'fill at x,y,z')"),
    layer: int = typer.Option(None, help="target layer (default: the layer --layer-name)"),
    layer_name: str = typer.Option("membrane-py fills", help="layer to use or create"),
    overwrite: bool = OVERWRITE,
    save: bool = SAVE,
    save_path: str = SAVE_PATH,
    save_job: Path = SAVE_JOB,
) -> None:
    """Fill the non-membrane region around a seed and paint it as one segment."""
    from membrane_py.edit.fill import FillJob

    execute(spec_or_exit(
        FillJob, source=source, source_layer=source_layer, vast=vast,
        seed=ints_option(seed, 3, "--seed"), threshold=threshold, three_d=three_d,
        max_size=max_size, max_depth=max_depth, mip=mip, invert=invert, name=name, layer=layer,
        layer_name=layer_name, overwrite=overwrite, save=save, save_path=save_path), save_job)


def register(app: typer.Typer) -> None:
    app.command("instances")(instances)
    app.command("paint")(paint)
    app.command("fill")(fill)
