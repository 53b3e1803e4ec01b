"""The storage layer: the atlas's files, its commit log, the atomic commit of Parquet parts,
reading one consistent version of them, integrity and compaction.

Modules, from the bottom: :mod:`~seqatlas.store.parts` (Parquet bytes and statistics),
:mod:`~seqatlas.store.backend` (a local directory or an object-store prefix behind one
interface), :mod:`~seqatlas.store.integrity` (sizes, hashes, the verified cache),
:mod:`~seqatlas.store.staging` (parts written by workers), :mod:`~seqatlas.store.journal`
(the commit log), :mod:`~seqatlas.store.reader`, :mod:`~seqatlas.store.writer` and
:mod:`~seqatlas.store.compaction`.
"""

from seqatlas.store.backend import LOCK
from seqatlas.store.compaction import compact_atlas
from seqatlas.store.integrity import VERIFIED_LOG, PartDamage, check_parts
from seqatlas.store.journal import MANIFEST, RUNS_KEPT
from seqatlas.store.parts import (ROW_GROUP_ROWS, parquet_bytes, parquet_format, part_name,
                                  storage_error, write_parquet)
from seqatlas.store.reader import AtlasReader, atlas_exists
from seqatlas.store.staging import STAGING, StagedPart, StagingUnreachable, stage_parts
from seqatlas.store.writer import AtlasWriter

__all__ = ["LOCK", "MANIFEST", "ROW_GROUP_ROWS", "RUNS_KEPT", "STAGING", "VERIFIED_LOG",
           "AtlasReader", "AtlasWriter", "PartDamage", "StagedPart", "StagingUnreachable",
           "atlas_exists", "check_parts", "compact_atlas", "parquet_bytes", "parquet_format",
           "part_name", "stage_parts", "storage_error", "write_parquet"]
