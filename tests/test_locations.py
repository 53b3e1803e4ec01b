"""An atlas on a filesystem other than S3 and the local disk: fsspec's in-process
``memory://`` (through pyarrow's fsspec handler), end to end."""

from __future__ import annotations

import pytest

import seqatlas
from seqatlas.errors import SeqAtlasError
from seqatlas.locations import remote_location
from seqatlas.store import AtlasReader
from tests.conftest import random_protein, write_fasta


def test_a_memory_atlas_ingests_queries_and_indexes_like_a_directory(tmp_path, tiny_esm):
    pytest.importorskip("fsspec", reason="memory:// goes through fsspec")
    fasta = write_fasta(tmp_path / "p.fa", {f"p{i}": random_protein(30 + 7 * i, seed=i)
                                            for i in range(4)})
    uri = f"memory://seqatlas-test-{tmp_path.name}/atlas"
    for atlas in (uri, tmp_path / "local"):
        report = seqatlas.ingest(fasta, atlas=atlas, model=str(tiny_esm), workers=0,
                                 progress=False, unit_tokens=300)
        assert report.positions_scored == sum(30 + 7 * i for i in range(4))
    remote, local = AtlasReader(uri).manifest, AtlasReader(tmp_path / "local").manifest
    assert {t: {n: p.sha256 for n, p in parts.items()} for t, parts in remote.parts.items()} \
        == {t: {n: p.sha256 for n, p in parts.items()} for t, parts in local.parts.items()}
    sql = "SELECT seq_id, count(*) AS n, round(sum(logp), 5) AS s FROM positions GROUP BY 1 ORDER BY 1"
    assert seqatlas.query.sql(uri, sql).to_pylist() == \
        seqatlas.query.sql(tmp_path / "local", sql).to_pylist()
    for atlas in (uri, tmp_path / "local"):
        assert seqatlas.build_index(atlas, type="flat")["ntotal"] == \
            sum(30 + 7 * i for i in range(4))
    assert seqatlas.query.knn(uri, at="p1:4", k=2).to_pylist() == \
        seqatlas.query.knn(tmp_path / "local", at="p1:4", k=2).to_pylist()
    assert remote_location(uri).info("atlas.json")[0] > 0
    again = seqatlas.ingest(fasta, atlas=uri, model=str(tiny_esm), workers=0, progress=False,
                            unit_tokens=300)
    assert again.units_scored == 0  # resumed: nothing left to do


def test_a_missing_remote_atlas_is_a_clear_error(tmp_path):
    with pytest.raises(SeqAtlasError, match="memory://nowhere-at-all/atlas"):
        seqatlas.query.sql("memory://nowhere-at-all/atlas", "SELECT 1")
