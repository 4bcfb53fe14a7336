"""Dask blockwise execution of the job kinds that work in blocks (whole-volume prediction)."""
