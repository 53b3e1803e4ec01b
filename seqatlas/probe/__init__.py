"""Causal probes of in-context look-up: corrupt a copy (and a matched control) and rescore.

- :func:`probe_icl` (``seqatlas probe icl``): every in-context copy of an atlas, rescored
  with its partner and a control region corrupted; rows in the atlas's ``ablations`` table.
- :func:`probe_doubling` (``seqatlas probe doubling``): S alone, S+S, S+S with copy 2
  corrupted and the same-composition control S+C, per sequence of a FASTA file.
"""

from __future__ import annotations

from seqatlas.probe.doubling import DoublingConfig, probe_doubling
from seqatlas.probe.icl import IclConfig, IclReport, probe_icl

__all__ = ["DoublingConfig", "IclConfig", "IclReport", "probe_doubling", "probe_icl"]
