"""The job layer: one spec type per workflow step, one entry signature
``run(spec, progress=None, cancel=None) -> Result``, and the registry that finds a step by
its ``kind``. GUI, CLI, worker and Dask only build specs and render events."""

from membrane_py.jobs.registry import KINDS, load_job, lookup, run, spec_from_dict
from membrane_py.jobs.spec import JobSpec, Result, SpecError

__all__ = ["KINDS", "JobSpec", "Result", "SpecError", "load_job", "lookup", "run",
           "spec_from_dict"]
