"""Region reads: ``query sql --region``, ``export --region`` and the plot tracks read only the
parts (and, in compacted files, the row groups) holding the region, and give the rows the
whole atlas gives there; z keeps the whole atlas's robust statistics."""

from __future__ import annotations

import random
import re
import shutil

import pyarrow.parquet as pq
import pytest

import seqatlas
from seqatlas.cli.main import main
from seqatlas.errors import InputError
from seqatlas.query import AnomalyParams, Engine, sql
from seqatlas.query.engine import region_engine
from seqatlas.store import AtlasReader
from tests.conftest import write_fasta
from tests.dna_models import make_overlapping
from tests.query_data import add_ablations

pytestmark = pytest.mark.filterwarnings("ignore:model .* may be out of domain:UserWarning")

LENGTHS = {"s1": 2400, "s2": 1800, "s3": 900}
REGION = ("s2", 700, 1100)
TEXT = "s2:700-1100"
WHERE = "seq_id = 's2' AND pos >= 700 AND pos < 1100"
TOKENS_WHERE = "seq_id = 's2' AND start < 1100 AND \"end\" > 700"
# low thresholds, so that a random model's flat scores still give anomalous regions
LOOSE = dict(z=1.0, min_length=2, max_gap=2)


def _dna(length: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice("ACGT") for _ in range(length))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A DNA atlas of three sequences scored in many small units (one part each)."""
    root = tmp_path_factory.mktemp("region_reads")
    model = make_overlapping(root / "k6", k=6, context_tokens=40)
    fasta = write_fasta(root / "g.fa", {s: _dna(n, i) for i, (s, n) in
                                        enumerate(LENGTHS.items())})
    seqatlas.ingest(fasta, atlas=root / "atlas", model=str(model), workers=0, progress=False,
                    unit_tokens=128, likelihood="unmasked")
    return root / "atlas"


@pytest.fixture
def atlas(built, tmp_path):
    """A private copy (tests cache robust statistics, compact or add ablations)."""
    return shutil.copytree(built, tmp_path / "atlas")


@pytest.fixture
def spy(monkeypatch):
    """(table, region, number of parts) of every AtlasReader.part_paths call."""
    calls = []
    original = AtlasReader.part_paths

    def part_paths(self, table, *, region=None):
        paths = original(self, table, region=region)
        calls.append((table, region, len(paths)))
        return paths

    monkeypatch.setattr(AtlasReader, "part_paths", part_paths)
    return calls


def _holding(atlas, table: str, region) -> int:
    records = AtlasReader(atlas).manifest.table_parts(table).values()
    return sum(record.may_hold(*region) for record in records)


def _bed_lines(path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


def _clipped(lines, region) -> list[list[str]]:
    """A whole track's lines cut to ``region``, as a region export writes them."""
    seq_id, start, end = region
    out = []
    for chrom, lo, hi, value in lines:
        lo, hi = max(int(lo), start), min(int(hi), end)
        if chrom == seq_id and lo < hi:
            out.append([chrom, str(lo), str(hi), value])
    return out


def test_sql_region_equals_an_explicit_where_cli_and_api(built, tmp_path):
    queries = [("SELECT * EXCLUDE (letter_logp, letter_logp_rc) FROM positions "
                "ORDER BY seq_id, pos", WHERE),
               ("SELECT token_id, seq_id, start, \"end\", token FROM tokens ORDER BY token_id",
                TOKENS_WHERE)]
    for query, where in queries:
        whole = sql(built, query.replace(" ORDER BY", f" WHERE {where} ORDER BY"))
        assert whole.num_rows > 0
        assert sql(built, query, region=TEXT).equals(whole)
        assert sql(built, query, region=REGION).equals(whole)
        assert seqatlas.Atlas(built).sql(query, region=TEXT).equals(whole)
        out = tmp_path / "cli.parquet"
        assert main(["query", "sql", query, "--atlas", str(built), "--region", TEXT,
                     "-o", str(out)]) == 0
        assert pq.read_table(out).equals(whole)
    # a whole sequence, and sequences stays whole
    assert sql(built, "SELECT count(*) AS n FROM positions", region="s3")["n"][0].as_py() == 900
    assert sql(built, "SELECT count(*) AS n FROM sequences", region=TEXT)["n"][0].as_py() == 3


def test_a_region_engine_registers_only_the_parts_holding_it(atlas, spy):
    seqatlas.query.anomalies(atlas)  # caches the robust statistics
    spy.clear()
    with Engine(atlas, region=TEXT) as engine:
        rows = engine.run("SELECT count(*) AS n FROM position_z")["n"][0].as_py()
        parts = {table: len(paths) for table, paths in engine.view_parts.items()}
    opened = [call for call in spy if call[0] == "positions"]
    assert rows == 400
    total = len(AtlasReader(atlas).part_paths("positions"))
    for table in ("positions", "tokens"):
        assert parts[table] == _holding(atlas, table, REGION)
        assert 0 < parts[table] <= total // 4, (parts, total)
    # statistics cached: positions are opened only for the region's parts
    assert opened == [("positions", REGION, parts["positions"])]
    assert parts["sequences"] == len(AtlasReader(atlas).part_paths("sequences"))


def test_compacted_region_reads_only_its_row_groups(atlas, monkeypatch):
    from seqatlas.store import ROW_GROUP_ROWS
    from seqatlas.store import compaction

    query = "SELECT pos, ref, logp_unmasked, entropy FROM positions ORDER BY pos"
    before = sql(atlas, query, region=TEXT)
    monkeypatch.setitem(ROW_GROUP_ROWS, "positions", 128)
    monkeypatch.setitem(ROW_GROUP_ROWS, "tokens", 128)
    monkeypatch.setitem(compaction.FILE_ROWS, "positions", 1024)
    seqatlas.compact(atlas)
    assert sql(atlas, query, region=TEXT).equals(before)
    assert sql(atlas, query.replace(" ORDER BY", f" WHERE {WHERE} ORDER BY")).equals(before)
    with Engine(atlas, region=TEXT, anomaly_views=False) as engine:
        files = engine.view_parts["positions"]
        plan = engine.run("EXPLAIN ANALYZE SELECT count(*) FROM positions")
    assert 0 < len(files) < len(AtlasReader(atlas).part_paths("positions"))
    # the row groups whose statistics can hold the region (DuckDB's zone maps)
    holding = total = 0
    for path in files:
        meta = pq.ParquetFile(path).metadata
        names = meta.schema.names
        for i in range(meta.num_row_groups):
            group = meta.row_group(i)
            seq = group.column(names.index("seq_id")).statistics
            pos = group.column(names.index("pos")).statistics
            total += 1
            holding += seq.min <= "s2" <= seq.max and pos.min < 1100 and pos.max >= 700
    assert holding < total
    text = "\n".join(str(v) for v in plan.column(1).to_pylist())
    scanned = re.findall(r"Row Groups Scanned:\s*(\d+)\s*/\s*(\d+)", text)
    if not scanned:
        pytest.skip("this DuckDB's EXPLAIN ANALYZE does not report the row groups scanned")
    assert [(int(a), int(b)) for a, b in scanned] == [(holding, total)]


def test_export_region_is_the_whole_export_cut_to_it(atlas, tmp_path):
    params = AnomalyParams(smooth=5, **LOOSE)
    for column in ("logp_unmasked", "z"):
        whole, part = tmp_path / f"{column}.bg", tmp_path / f"{column}.region.bg"
        seqatlas.export(atlas, format="bedgraph", output=whole, column=column, params=params)
        result = seqatlas.export(atlas, format="bedgraph", output=part, column=column,
                                 params=params, region=TEXT)
        assert result["region"] == TEXT
        assert _bed_lines(part) == _clipped(_bed_lines(whole), REGION)
        assert result["intervals"] == 400
    # the CLI writes the same
    out = tmp_path / "cli.bg"
    assert main(["export", "bedgraph", "--atlas", str(atlas), "--column", "z", "--smooth", "5",
                 "--region", TEXT, "-o", str(out)]) == 0
    assert out.read_text() == (tmp_path / "z.region.bg").read_text()


def test_export_bed_region_keeps_whole_regions_cut_by_its_edges(atlas, tmp_path, monkeypatch):
    from seqatlas.query import engine as engine_module

    monkeypatch.setattr(engine_module, "FIRST_PAD", 0)  # the padding must grow to be exact
    params = AnomalyParams(smooth=3, **LOOSE)
    whole = tmp_path / "whole.bed"
    seqatlas.export(atlas, format="bed", output=whole, params=params)
    rows = sorted(_bed_lines(whole), key=lambda r: int(r[1]) - int(r[2]))
    assert rows and int(rows[0][2]) - int(rows[0][1]) >= 3, \
        "the atlas should have anomalous regions at these thresholds"
    chrom, end = rows[0][0], int(rows[0][2])
    # a region starting at the last position of the longest anomalous region: that region is
    # still whole, as the whole atlas has it
    region = (chrom, end - 1, min(LENGTHS[chrom], end + 300))
    out = tmp_path / "region.bed"
    seqatlas.export(atlas, format="bed", output=out, params=params,
                    region=f"{chrom}:{region[1]}-{region[2]}")
    expected = [r for r in _bed_lines(whole) if r[0] == chrom and int(r[1]) < region[2]
                and int(r[2]) > region[1]]
    assert _bed_lines(out) == expected and rows[0] in expected


def test_z_inside_a_region_is_the_whole_atlas_z(atlas, spy, monkeypatch):
    from seqatlas.query import engine as engine_module

    query = "SELECT pos, score, z, tail FROM position_z ORDER BY pos"
    whole = sql(atlas, query.replace(" ORDER BY", f" WHERE {WHERE} ORDER BY"))
    stats = sql(atlas, "SELECT * FROM robust_stats ORDER BY ref")
    # not cached: the region engine computes the statistics over every positions part
    assert AtlasReader(atlas).manifest.cached("robust_z", "logp_unmasked") is None
    assert sql(atlas, query, region=TEXT).equals(whole)
    assert sql(atlas, "SELECT * FROM robust_stats ORDER BY ref", region=TEXT).equals(stats)
    seqatlas.query.anomalies(atlas)  # now cached
    assert sql(atlas, query, region=TEXT).equals(whole)
    # smoothed z and the anomalous regions overlapping the region, through region_engine
    params = AnomalyParams(smooth=7, **LOOSE)
    whole = sql(atlas, query.replace(" ORDER BY", f" WHERE {WHERE} ORDER BY"), params=params)
    regions = sql(atlas, "SELECT * FROM anomaly_regions WHERE seq_id = 's2' AND start < 1100 "
                  "AND \"end\" > 700 ORDER BY start, tail", params=params)
    spy.clear()
    monkeypatch.setattr(engine_module, "FIRST_PAD", 0)  # the padding must grow to be exact
    engine, span = region_engine(atlas, TEXT, anomaly_params=params)
    with engine:
        assert span == REGION and engine.region[1] < 700 and engine.region[2] > 1100
        assert engine.fetch_internal(query.replace(" ORDER BY", f" WHERE {WHERE} ORDER BY")
                                     ).equals(whole)
        assert engine.fetch_internal(
            "SELECT * FROM anomaly_regions WHERE seq_id = 's2' AND start < 1100 "
            "AND \"end\" > 700 ORDER BY start, tail").equals(regions)
    opened = [call for call in spy if call[0] == "positions"]
    total = len(AtlasReader(atlas).part_paths("positions"))
    assert opened and all(region is not None and n < total for _, region, n in opened)


def test_the_plot_track_reads_the_region_and_draws_the_whole_atlas_values(atlas, spy):
    from seqatlas.plot.data import track_data

    params = AnomalyParams(smooth=3, **LOOSE)
    seqatlas.query.anomalies(atlas)  # caches the robust statistics (else read whole, once)
    spy.clear()
    data = track_data(atlas, region=TEXT, params=params, max_positions=5000, max_arcs=100)
    opened = [call for call in spy if call[0] == "positions"]
    total = len(AtlasReader(atlas).part_paths("positions"))
    assert opened and all(region is not None and n < total for _, region, n in opened)
    whole = sql(atlas, f"SELECT pos, z FROM position_z WHERE {WHERE} ORDER BY pos",
                params=params)
    assert data["x"].tolist() == whole["pos"].to_pylist()
    assert [None if z != z else z for z in data["z"]["mean"].tolist()] == \
        whole["z"].to_pylist()
    regions = sql(atlas, "SELECT start, \"end\", tail FROM anomaly_regions WHERE seq_id = 's2' "
                  "AND \"end\" > 700 AND start < 1100 ORDER BY start, tail", params=params)
    assert data["anomaly_regions"] == regions.to_pylist()


def test_a_region_engine_knows_every_ablation_method_of_the_atlas(atlas):
    def rows(method, seq_id, positions):
        return [{"seq_id": seq_id, "pos": p, "target_start": 10, "target_end": 20,
                 "partner_start": 30, "partner_end": 40, "control_rule": "none",
                 "copy_strand": "+", "window_start": 0, "window_end": 100, "method": method,
                 "seed": 0, "logp_intact": -1.0, "logp_partner": -1.5, "logp_control": -1.1}
                for p in positions]

    add_ablations(atlas, rows("mask", "s2", range(800, 810)))
    add_ablations(atlas, rows("shuffle", "s1", range(100, 110)))
    with Engine(atlas, region=TEXT) as engine:
        assert engine.ablation_methods == ("mask", "shuffle")
        assert engine.run("SELECT count(*) AS n FROM ablations")["n"][0].as_py() == 10
    with pytest.raises(seqatlas.SeqAtlasError, match="several methods"):
        sql(atlas, "SELECT net_gain FROM position_z", region=TEXT)
    chosen = sql(atlas, "SELECT count(net_gain) AS n FROM position_z", region=TEXT,
                 params=AnomalyParams(ablation_method="mask"))
    assert chosen["n"][0].as_py() == 10


@pytest.mark.parametrize("region, says", [
    ("s9:0-10", "has no sequence 's9'"),
    ("s2:500-500", "is empty"),
    ("s2:100-99999", "ends past the end of s2"),
    ("s2:ten-20", "is not SEQ:START-END"),
])
def test_a_bad_region_is_an_error_naming_it(built, tmp_path, capsys, region, says):
    with pytest.raises(InputError, match=re.escape(says)):
        sql(built, "SELECT 1", region=region)
    for argv in (["query", "sql", "SELECT count(*) FROM positions"],
                 ["export", "bedgraph", "--column", "logp_unmasked", "-o",
                  str(tmp_path / "x.bg")]):
        assert main([*argv, "--atlas", str(built), "--region", region]) == 1
        err = capsys.readouterr().err
        assert f"region {region!r}" in err and says in err and "Traceback" not in err
    assert not (tmp_path / "x.bg").exists()
