"""Options several commands share, and the parsers that turn typed text into spec values.

Coordinates are typed as VAST shows them: boxes ``minx,maxx,miny,maxy,minz,maxz`` and
points ``x,y,z``, inclusive, at mip 0, whatever mip a job works at.
"""

from __future__ import annotations

import typer

from membrane_py.cli.render import fail, one_line

BOX = typer.Option(None, help="minx,maxx,miny,maxy,minz,maxz (mip 0, inclusive, as VAST shows "
                   "them); default: the whole volume")
CLIP = typer.Option(False, help="cut a --box that reaches outside the volume to the volume "
                    "(a warning) instead of stopping with an error")
VOXEL_SIZE = typer.Option(None, help="voxel size in nm as X Y Z, VAST's order, recorded in "
                          "the outputs (default: from the data; asked for when it has none)")
POINT = typer.Option(None, help="x,y,z (mip 0) to use instead of asking VAST; repeat for "
                     "several cubes")
LABEL_FORMAT = typer.Option(
    "auto", help="what label values mean: auto (read from the values), classes (0 unknown, "
    "1..K, as `membrane gt` writes), codes (mEMbrain PNG codes, as `membrane patches` writes) "
    "or isbi (0 = membrane, 255 = interior)")
MAX_CLASSES = typer.Option(16, min=2, help="refuse labels with more classes than this (more "
                           "usually means instance ids or a wrong --label-format)")
_AUGMENTATION_NAMES = ("blur, motion_blur, equalize, intensity (brightness, contrast, gamma), "
                       "elastic")
AUGMENTATIONS = typer.Option(None, help=f"extra augmentations, comma-separated: "
                             f"{_AUGMENTATION_NAMES}, or all")
#: training's default is every augmentation (docs/training.md says why)
TRAIN_AUGMENTATIONS = typer.Option("all", help=f"extra augmentations, comma-separated: "
                                   f"{_AUGMENTATION_NAMES}, all (the default) or none")
ADAPT_BN = typer.Option(None, "--adapt-bn/--no-adapt-bn", help="re-estimate the network's "
                        "batch-norm statistics on the EM being predicted first (no labels "
                        "needed); default: when the network validated better so in training "
                        "(docs/prediction.md)", show_default=False)
SAVE_JOB = typer.Option(None, help="also write the job spec as JSON here (run it again with "
                        "`membrane run FILE`)")


def _parsed(parse, *args):
    try:
        return parse(*args)
    except ValueError as e:
        raise fail(one_line(e)) from None


def ints_option(text: str | None, n: int, what: str) -> list[int] | None:
    """'1,2,3' -> [1, 2, 3] (exactly ``n``), None stays None; bad text exits with one line."""
    from membrane_py.geometry import parse_ints

    return None if text is None else _parsed(parse_ints, text, n, what)


def floats_option(text: str | None, what: str) -> list[float] | None:
    """'0.7,0.3' -> [0.7, 0.3], None stays None; bad text exits with one line."""
    from membrane_py.geometry import parse_floats

    return None if text is None else _parsed(parse_floats, text, what)


def box_option(text: str | None) -> list[int] | None:
    """A ``--box`` value as the spec stores it (VAST order, mip 0, inclusive), checked."""
    from membrane_py.geometry import Box

    values = ints_option(text, 6, "--box")
    if values is not None:
        _parsed(Box.from_vast_list, values)
    return values


def points_option(texts: list[str] | None) -> list[list[int]] | None:
    """Repeated ``--point x,y,z`` values, or None."""
    return [ints_option(t, 3, "--point") for t in texts] if texts else None


def label_map_option(text: str | None) -> dict[int, int] | None:
    """'0:2,255:1' -> {0: 2, 255: 1}."""
    from membrane_py.augment.patches import parse_label_map

    return _parsed(parse_label_map, text)


def spec_or_exit(spec_cls, **fields):
    """Build a job spec; an invalid combination of options exits with one line."""
    return _parsed(lambda: spec_cls(**fields))


def augment_option(flips: bool, names: str | None):
    """``--augment/--no-augment`` (flips, rot90) plus ``--augmentations a,b`` -> an
    AugmentConfig, or None when nothing is on."""
    from membrane_py.augment.transforms import AugmentConfig

    chosen = [n.strip() for n in names.split(",") if n.strip()] if names else []
    if not flips and chosen in ([], ["none"]):
        return None
    return _parsed(AugmentConfig.from_names, chosen, flips)
