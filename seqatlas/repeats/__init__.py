"""The annotate stage: repeats into an atlas's ``repeats`` table, from a file
(:mod:`~seqatlas.repeats.formats`, :mod:`~seqatlas.repeats.importer`), a repeat finder run on
the atlas's own sequences (:mod:`~seqatlas.repeats.finders`) or the in-context copies found
at ingest (:mod:`~seqatlas.repeats.copies`)."""

from __future__ import annotations

from pathlib import Path

from seqatlas.errors import ConfigError
from seqatlas.repeats.copies import annotate_copies, copy_repeats
from seqatlas.repeats.finders import run_repeat_finder
from seqatlas.repeats.formats import FORMATS, detect_format, parse_repeats, read_repeats
from seqatlas.repeats.importer import import_file
from seqatlas.util import spooled_inputs

__all__ = ["FORMATS", "annotate", "annotate_copies", "copy_repeats", "detect_format",
           "parse_repeats", "read_repeats", "run_repeat_finder"]


def annotate(path: str | Path | None = None, *, atlas: str | Path, format: str | None = None,
             names: str = "auto", run: str | None = None, run_args: str | None = None,
             progress: bool | str = True, detect: bool = False, on_mismatch: str = "error") -> dict:
    """Import repeats into an atlas's ``repeats`` table, from a file or by running a finder.

    Exactly one of ``path`` (a repeat annotation file; ``-`` reads stdin), ``run`` ("tantan" or "trf", run on
    the atlas's own sequences with ``run_args`` replacing its default parameters; see
    :func:`seqatlas.repeats.finders.run_repeat_finder`) and ``detect=True`` (the
    in-context copies found at ingest; :func:`seqatlas.copy_detector.annotate_copies`). File sequence names must match
    the atlas's ids; ``names="auto"`` also maps ``chrX`` <-> ``X`` and ``chrM`` <-> ``MT``.
    A FILE record on a sequence the atlas lacks, or running past its end, is refused with
    ``on_mismatch="error"``; ``"skip"`` leaves both out, ``"clip"`` leaves out the first and
    clips the second to the sequence (leaving out those that start past the end); the summary
    counts them (``skipped_unknown_sequence``, ``skipped_past_end``, ``clipped``).
    Importing the same file (with the same outcome) or run again is a no-op. Returns a
    summary.
    """
    sources = [flag for flag, value in (("FILE", path), ("--run", run),
                                        ("--detect", detect or None)) if value is not None]
    if len(sources) != 1:
        raise ConfigError("give exactly one source of repeats: a FILE to import, --run "
                          "tantan|trf to find them, or --detect for the in-context copies "
                          f"found at ingest (got {' and '.join(sources) or 'none'})")
    if on_mismatch != "error" and path is None:
        raise ConfigError("--on-mismatch describes a FILE's records; --run and --detect "
                          "annotate the atlas's own sequences")
    if detect:
        return annotate_copies(atlas)
    if run is not None:
        if format is not None:
            raise ConfigError("--format describes a FILE; with --run seqatlas reads the "
                              "program's own output")
        return run_repeat_finder(atlas, run, args=run_args, progress=progress)
    if run_args is not None:
        raise ConfigError("--run-args goes with --run (tantan or trf)")
    with spooled_inputs([path], what="repeat file") as spool:  # '-' (stdin), a pipe
        [local] = spool.paths
        return import_file(local, atlas=atlas, format=format, names=names,
                           on_mismatch=on_mismatch, source=spool.names.get(str(local)))
