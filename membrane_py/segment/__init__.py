"""Instance segmentation of EM volumes from membrane probabilities (numpy in, numpy out).

A membrane network predicts, for every pixel, the probability that it lies on a cell
membrane (bright = membrane). This package turns such maps into segment ids:

- 2D instances (:func:`segment_section`, :func:`segment_stack`): seeds are the h-minima of
  the membrane map (basins deeper than ``h``), a watershed floods the map from them, and
  membrane pixels and tiny segments are cleared. Large sections are processed in windows
  with a halo of context and joined, with the same result as processing them whole.
- 3D linking (:func:`link_sections`, :func:`agglomerate`): 2D segments of neighbouring
  sections that overlap enough become one 3D object (serial-section data).
- 3D watershed (:func:`watershed_3d`): the same seeded flood in 3D, for near-isotropic data.
- Affinity agglomeration (:func:`segment_affinities`, :func:`agglomerate_affinities`):
  watershed fragments of an affinity map merged hierarchically by the mean (or a quantile)
  affinity of their contacts (waterz), up to one merge threshold; :func:`boundary_affinities`
  derives affinities from a membrane map, :func:`relabel` numbers ids 1..n.
- Mutex watershed (:func:`mutex_watershed`): attractive and repulsive affinity edges
  (long-range offsets) clustered greedily without fragments (``mwatershed``).
- Membrane-constrained fill (:func:`fill_region`): the cell around a clicked point.

Helpers: :func:`to_probability` brings 8-bit/16-bit tiles or floats to one [0, 1] scale,
:func:`combine_predictions` merges several runs, :func:`remove_small` drops small segments,
:func:`grow_into_membranes` lets segments tile their sections (for scoring),
:func:`membrane_map_from_labels` draws an ideal membrane map from ground truth (tests,
benchmarks) and :func:`mix64` is the fixed hash behind tie-breaking and id colours.

Arrays are (y, x) sections or (z, y, x) volumes; probabilities lie in [0, 1]; ids are
uint32 with 0 meaning membrane/background. Nothing here talks to VAST or reads files:
``membrane_py.edit`` does that and calls these functions.
"""

from membrane_py.segment.affinity import (
    AgglomerationKnobs,
    agglomerate_affinities,
    boundary_affinities,
    relabel,
    segment_affinities,
    watershed_fragments,
)
from membrane_py.segment.agglomerate import (
    AgglomerationConfig,
    agglomerate,
    link_sections,
    watershed_3d,
)
from membrane_py.segment.fill import fill_region
from membrane_py.segment.instances import (
    InstanceConfig,
    combine_predictions,
    grow_into_membranes,
    membrane_map_from_labels,
    mix64,
    remove_small,
    segment_section,
    segment_stack,
    to_probability,
)
from membrane_py.segment.mutex import mutex_watershed

__all__ = [
    "AgglomerationConfig",
    "AgglomerationKnobs",
    "InstanceConfig",
    "agglomerate",
    "agglomerate_affinities",
    "boundary_affinities",
    "combine_predictions",
    "fill_region",
    "grow_into_membranes",
    "link_sections",
    "membrane_map_from_labels",
    "mix64",
    "mutex_watershed",
    "relabel",
    "remove_small",
    "segment_affinities",
    "segment_section",
    "segment_stack",
    "to_probability",
    "watershed_3d",
    "watershed_fragments",
]
