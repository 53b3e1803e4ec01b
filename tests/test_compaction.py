"""Compaction (seqatlas compact): every read gives the same answer before and after, a
re-ingest still finds nothing to do, integrity covers compacted parts, and repair re-scores
all the units of a damaged one."""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import seqatlas
from seqatlas import query
from seqatlas.cli.main import main
from seqatlas.html_report import report
from seqatlas.query import AnomalyParams
from seqatlas.store import AtlasReader
from tests.conftest import write_fasta

DNA = dict(model="dnabert6-tiny", likelihood="fast", workers=0, progress=False,
           unit_tokens=600, window=120, overlap=30)


def _dna(length: int, seed: int) -> str:
    rng = random.Random(seed)
    motif = "".join(rng.choice("ACGT") for _ in range(40))
    body = [rng.choice("ACGT") for _ in range(length)]
    for at in (200, 700, 1500):  # copies within one window apart
        body[at:at + 40] = motif
        body[at + 60:at + 100] = motif
    return "".join(body)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("compaction")
    fasta = write_fasta(root / "g.fa", {"chrA": _dna(2600, 1), "chrC": _dna(1800, 2)})
    atlas = root / "loose"
    seqatlas.ingest(fasta, atlas=atlas, **DNA)
    bed = root / "r.bed"
    bed.write_text("chrA\t100\t400\tAlu1\t0\t+\nchrA\t900\t1300\tL1\t0\t-\n"
                   "chrC\t50\t500\t(CA)n\t0\t+\n")
    seqatlas.annotate(bed, atlas=atlas)
    seqatlas.annotate(atlas=atlas, detect=True, progress=False)
    seqatlas.build_index(atlas, type="flat")
    compacted = root / "compacted"
    shutil.copytree(atlas, compacted)
    report = seqatlas.compact(compacted)
    return {"root": root, "fasta": fasta, "loose": atlas, "compacted": compacted,
            "report": report}


SQL = ["SELECT * FROM positions ORDER BY seq_id, pos",
       "SELECT token_id, seq_id, start, \"end\", token FROM tokens ORDER BY token_id",
       "SELECT * FROM repeats ORDER BY seq_id, start, \"end\", name",
       "SELECT ref, count(*) AS n, avg(logp) AS m FROM positions GROUP BY ref ORDER BY ref",
       "SELECT * FROM position_z ORDER BY seq_id, pos"]


def _reads(atlas: Path, out: Path) -> dict:
    out.mkdir(exist_ok=True)
    results = {sql: query.sql(atlas, sql).to_pylist() for sql in SQL}
    results["anomalies"] = seqatlas.Atlas(atlas).anomalies(z=1.5, with_repeats=True).to_pylist()
    results["enrichment"] = seqatlas.Atlas(atlas).enrichment(z=1.5).to_pylist()
    results["knn"] = seqatlas.Atlas(atlas).knn(kmer="ACGTAC", k=5).to_pylist()
    seqatlas.export(atlas, format="bedgraph", column="logp", output=out / "t.bedgraph")
    results["bedgraph"] = (out / "t.bedgraph").read_text()
    seqatlas.export(atlas, format="bed", output=out / "t.bed", params=AnomalyParams(z=1.5))
    results["bed"] = (out / "t.bed").read_text()
    return results


def test_compaction_makes_few_sorted_parts_and_keeps_every_unit(built):
    before, after = AtlasReader(built["loose"]), AtlasReader(built["compacted"])
    for table in ("positions", "tokens"):
        loose = before.manifest.table_parts(table)
        parts = after.manifest.table_parts(table)
        assert len(loose) > 5 and len(parts) == 1
        (record,) = parts.values()
        assert record.unit == "compacted"
        assert sorted(record.units) == sorted(r.unit for r in loose.values())
        assert record.rows == sum(r.rows for r in loose.values())
        data = pq.read_table(built["compacted"] / table / next(iter(parts)))
        key = "pos" if table == "positions" else "start"
        rows = list(zip(data["seq_id"].to_pylist(), data[key].to_pylist()))
        assert rows == sorted(rows)
        assert record.stats == {"seq_id": ["chrA", "chrC"],
                                "pos": [0, max(data["end" if table == "tokens" else "pos"]
                                               .to_pylist())]}
    assert built["report"]["tables"]["positions"]["rewritten"] == len(
        before.manifest.table_parts("positions"))
    assert after.manifest.units == before.manifest.units
    # nothing else moved
    for table in ("sequences", "repeats"):
        assert after.manifest.table_parts(table) == before.manifest.table_parts(table)
    assert seqatlas.verify(built["compacted"])["ok"]


def test_every_read_is_the_same_after_compaction(built, tmp_path):
    loose = _reads(built["loose"], tmp_path / "a")
    compacted = _reads(built["compacted"], tmp_path / "b")
    for key in loose:
        assert compacted[key] == loose[key], key
    assert loose["anomalies"] and loose["knn"] and loose["bedgraph"]


def _report_text(atlas: Path, output: Path) -> str:
    """The report, less what compaction changes on purpose: the parts and bytes per table,
    and when the atlas was last updated."""
    report(atlas, output=output)
    text = output.read_text()
    text = re.sub(r"<th>updated</th><td>[^<]*</td>", "", text)
    return re.sub(r"(<tr><td>(positions|tokens)</td><td>[\d,]+</td>)<td>[^<]*</td><td>[^<]*</td>",
                  r"\1", text)


def test_probe_and_report_are_the_same_after_compaction(built, tmp_path):
    for name in ("loose", "compacted"):
        shutil.copytree(built[name], tmp_path / name)
        seqatlas.probe_icl(tmp_path / name, where="pos < 400", workers=0, progress=False)
    ablations = [query.sql(tmp_path / n, "SELECT * FROM ablations ORDER BY ALL").to_pylist()
                 for n in ("loose", "compacted")]
    assert ablations[0] and ablations[0] == ablations[1]
    # the same atlas (same path) before and after its compaction
    atlas = tmp_path / "loose"
    before = _report_text(atlas, tmp_path / "before.html")
    seqatlas.compact(atlas)
    assert _report_text(atlas, tmp_path / "after.html") == before


def test_a_re_ingest_after_compaction_does_nothing(built, tmp_path):
    atlas = tmp_path / "a"
    shutil.copytree(built["compacted"], atlas)
    version = AtlasReader(atlas).version
    report = seqatlas.ingest(built["fasta"], atlas=atlas, **DNA)
    assert report.units_scored == 0 and report.units_skipped == report.units_total
    assert AtlasReader(atlas).version == version
    assert seqatlas.compact(atlas)["tables"]["positions"]["rewritten"] == 0


def test_a_damaged_compacted_part_is_named_and_repaired(built, tmp_path):
    atlas = tmp_path / "a"
    shutil.copytree(built["compacted"], atlas)
    expected = query.sql(atlas, SQL[0]).to_pylist()
    (part,) = AtlasReader(atlas).part_paths("positions")
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 1
    part.write_bytes(bytes(data))
    report = seqatlas.verify(atlas)
    assert not report["ok"] and report["damaged"][0]["part"] == part.name
    assert report["damaged"][0]["unit"] == "compacted"
    repaired = seqatlas.repair(atlas, workers=0, progress=False)
    assert repaired["rescored_units"] == len(AtlasReader(built["loose"]).manifest
                                             .table_parts("positions"))
    assert seqatlas.verify(atlas)["ok"]
    assert query.sql(atlas, SQL[0]).to_pylist() == expected


def test_new_units_among_compacted_ones_are_merged_and_copies_not_doubled(built, tmp_path):
    atlas = tmp_path / "a"
    shutil.copytree(built["loose"], atlas)  # copies detected in every unit so far
    more = write_fasta(tmp_path / "more.fa", {"chrB": _dna(1400, 3)})
    seqatlas.ingest(more, atlas=atlas, **DNA)
    done = seqatlas.compact(atlas)["tables"]["positions"]
    # one file holds units whose copies were detected and units whose were not
    assert done["parts_after"] == 1 and done["rewritten"] > 1
    seqatlas.annotate(atlas=atlas, detect=True, progress=False)
    stored = query.sql(atlas, "SELECT seq_id, start, \"end\", strand, name FROM repeats WHERE "
                       "source = 'seqatlas-copies' ORDER BY ALL").to_pylist()
    from seqatlas.repeats.copies import copy_repeats

    fresh = copy_repeats(atlas).select(["seq_id", "start", "end", "strand", "name"])
    assert stored == sorted(fresh.to_pylist(), key=lambda r: tuple(r.values()))
    assert any(r["seq_id"] == "chrB" for r in stored)


def test_compact_through_the_cli_and_its_errors(built, tmp_path, capsys, monkeypatch):
    import seqatlas.store.integrity as integrity

    atlas = tmp_path / "a"
    shutil.copytree(built["loose"], atlas)
    assert main(["compact", "--atlas", str(atlas), "--table", "positions", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"positions"' in out and '"tokens"' not in out
    hashed = []  # compaction hashed what it wrote: readers do not hash it again
    real = integrity.file_sha256
    monkeypatch.setattr(integrity, "file_sha256", lambda p: hashed.append(p) or real(p))
    assert AtlasReader(atlas).positions().num_rows == 4400 and hashed == []
    monkeypatch.undo()
    assert len(AtlasReader(atlas).manifest.table_parts("positions")) == 1
    assert len(AtlasReader(atlas).manifest.table_parts("tokens")) > 1
    assert main(["compact", "--atlas", str(atlas), "--table", "repeats"]) == 1
    assert "compaction applies to positions, tokens" in capsys.readouterr().err
    assert main(["compact", "--atlas", str(atlas), "--memory-limit", "lots"]) == 1
    assert "--memory-limit" in capsys.readouterr().err


def test_a_sort_larger_than_its_memory_budget_is_done_in_pieces(built, tmp_path):
    atlas = tmp_path / "a"
    shutil.copytree(built["loose"], atlas)
    from seqatlas.store import compact_atlas

    compact_atlas(atlas, memory_bytes=20_000)  # a few hundred rows at a time
    assert query.sql(atlas, SQL[0]).to_pylist() == query.sql(built["loose"], SQL[0]).to_pylist()
    (record,) = AtlasReader(atlas).manifest.table_parts("positions").values()
    data = pq.read_table(atlas / "positions" / next(iter(
        AtlasReader(atlas).manifest.table_parts("positions"))))
    rows = list(zip(data["seq_id"].to_pylist(), data["pos"].to_pylist()))
    assert rows == sorted(rows) and len(rows) == len(set(rows)) == record.rows


def test_ingest_compact_compacts_at_the_end_of_the_run(built, tmp_path, capsys):
    atlas = tmp_path / "a"
    argv = ["ingest", str(built["fasta"]), "--atlas", str(atlas), "--model", "dnabert6-tiny",
            "--likelihood", "fast", "--workers", "0", "--no-progress", "--unit-tokens", "600",
            "--window", "120", "--overlap", "30", "--compact"]
    assert main(argv) == 0
    reader = AtlasReader(atlas)
    for table in ("positions", "tokens"):
        (record,) = reader.manifest.table_parts(table).values()
        assert record.unit == "compacted" and len(record.units) == len(
            AtlasReader(built["loose"]).manifest.table_parts(table))
    assert query.sql(atlas, SQL[0]).to_pylist() == query.sql(built["loose"], SQL[0]).to_pylist()
    assert main(argv) == 0  # a re-run: nothing scored, nothing rewritten
    assert AtlasReader(atlas).version == reader.version
