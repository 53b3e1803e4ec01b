"""Workers write their units' parts, the driver commits them (seqatlas.store.stage_parts,
AtlasWriter.commit_staged), and the manifest's run record says what crossed the driver."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

import seqatlas
from seqatlas.cli.main import main
from seqatlas.errors import AtlasDamagedError, AtlasError, ConfigError
from seqatlas.store import STAGING, AtlasReader, AtlasWriter, StagedPart, part_name, stage_parts
from tests.conftest import random_protein, write_fasta

OPTIONS = {"progress": False, "unit_tokens": 400}


def _fasta(tmp_path: Path) -> Path:
    return write_fasta(tmp_path / "in.fa", {f"p{i}": random_protein(40 + 9 * i, seed=i)
                                            for i in range(8)})


def _parts(atlas: Path) -> dict:
    """Every committed part by table and name: rows, bytes and SHA-256 (the whole atlas's
    data, byte for byte)."""
    manifest = json.loads((atlas / "atlas.json").read_text())
    return {table: {name: (p["rows"], p["bytes"], p["sha256"]) for name, p in parts.items()}
            for table, parts in manifest["parts"].items() if parts}


def _units(atlas: Path) -> dict:
    units = json.loads((atlas / "atlas.json").read_text())["units"]
    return {key: {k: v for k, v in unit.items() if k != "committed"}
            for key, unit in units.items()}


def _files(atlas: Path) -> set[str]:
    return {str(p.relative_to(atlas)) for p in atlas.rglob("*") if p.is_file()}


def _check_same_atlas(one: Path, other: Path) -> None:
    assert _parts(one) == _parts(other)
    assert _units(one) == _units(other)
    assert _files(one) == _files(other)  # no staging directory, no stray file
    for table in ("positions", "tokens"):
        assert seqatlas.Atlas(one).__getattribute__(table)().equals(
            seqatlas.Atlas(other).__getattribute__(table)())


def test_in_process_worker_written_atlas_is_byte_identical(tmp_path, tiny_esm):
    fasta = _fasta(tmp_path)
    for mode in ("driver", "workers"):
        report = seqatlas.ingest(fasta, atlas=tmp_path / mode, model=str(tiny_esm), workers=0,
                                 write_parts=mode, **OPTIONS)
        assert report.units_scored > 3
    _check_same_atlas(tmp_path / "driver", tmp_path / "workers")
    runs = {mode: json.loads((tmp_path / mode / "atlas.json").read_text())["runs"]
            for mode in ("driver", "workers")}
    for mode, records in runs.items():
        (run,) = records
        assert run["write_parts"] == mode and run["executor"] == "in-process"
        assert run["positions_scored"] == sum(40 + 9 * i for i in range(8))
        assert run["nodes"] == {"local": run["units"]}
        bytes_ = run["driver_bytes"]
        assert bytes_["per_position"] == round((bytes_["sent"] + bytes_["received"]) /
                                               run["positions_scored"], 3)
    # the rows (fp16 embeddings of 32 dims, the positions columns) come back only when the
    # driver writes: then at least 64 bytes per position, else the names and digests alone
    assert runs["driver"][0]["driver_bytes"]["received"] > 64 * 400
    workers = runs["workers"][0]
    assert workers["driver_bytes"]["received"] < 4096 * workers["units"]  # whatever the rows


def test_a_node_that_cannot_see_the_staging_area_sends_its_rows_to_the_driver(
        tmp_path, tiny_esm, monkeypatch):
    """As on a cluster whose atlas is on the driver's own disk: the workers find no staging
    directory, so their rows come back and the driver writes them (one warning per node);
    the atlas is the same as a driver-written one and the run record counts those units."""
    fasta = _fasta(tmp_path)
    seqatlas.ingest(fasta, atlas=tmp_path / "driver", model=str(tiny_esm), workers=0,
                    write_parts="driver", **OPTIONS)
    elsewhere = tmp_path / "another-node" / "staging"  # never made: not on this "node"
    monkeypatch.setattr(AtlasWriter, "staging_area", lambda self: elsewhere)
    with pytest.warns(UserWarning, match="does not see the atlas's staging area") as caught:
        report = seqatlas.ingest(fasta, atlas=tmp_path / "workers", model=str(tiny_esm),
                                 workers=0, write_parts="workers", **OPTIONS)
    assert sum("staging area" in str(w.message) for w in caught) == 1
    assert not elsewhere.exists()
    _check_same_atlas(tmp_path / "driver", tmp_path / "workers")
    (run,) = json.loads((tmp_path / "workers" / "atlas.json").read_text())["runs"]
    assert run["units_sent_back"] == {"local": report.units_scored} == run["nodes"]
    assert run["driver_bytes"]["received"] > 64 * 400  # the rows crossed the driver


@pytest.mark.ray
def test_ray_worker_written_atlas_is_byte_identical_and_the_cli_chooses(tmp_path, tiny_esm,
                                                                       ray_session, capsys):
    fasta = _fasta(tmp_path)
    seqatlas.ingest(fasta, atlas=tmp_path / "workers", model=str(tiny_esm), workers=2,
                    cpus_per_worker=1, **OPTIONS)
    code = main(["ingest", str(fasta), "--atlas", str(tmp_path / "driver"), "--model",
                 str(tiny_esm), "--workers", "2", "--cpus-per-worker", "1", "--unit-tokens",
                 "400", "--no-progress", "--write-parts", "driver"])
    assert code == 0, capsys.readouterr().err
    _check_same_atlas(tmp_path / "driver", tmp_path / "workers")
    workers, driver = (json.loads((tmp_path / m / "atlas.json").read_text())["runs"][-1]
                       for m in ("workers", "driver"))
    assert workers["executor"] == driver["executor"] == "ray"
    assert (workers["write_parts"], driver["write_parts"]) == ("workers", "driver")
    assert sum(workers["nodes"].values()) == workers["units"]
    assert workers["driver_bytes"]["received"] < 4096 * workers["units"]
    assert workers["driver_bytes"]["per_position"] * 3 < driver["driver_bytes"]["per_position"]


def test_cli_refuses_an_unknown_writer(tmp_path, tiny_esm, capsys):
    fasta = write_fasta(tmp_path / "p.fa", {"x": "MKTAYIAK"})
    code = main(["ingest", str(fasta), "--atlas", str(tmp_path / "a"), "--model",
                 str(tiny_esm), "--workers", "0", "--write-parts", "nobody"])
    assert code == 2 and "--write-parts" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--write-parts must be one of workers, "
                       "driver"):
        seqatlas.ingest(fasta, atlas=tmp_path / "a", model=str(tiny_esm), write_parts="x")
    assert not (tmp_path / "a").exists()


# -- the commit of staged parts -------------------------------------------------------------

def _table(n: int) -> pa.Table:
    return pa.table({"ordinal": pa.array(range(n), pa.int32()),
                     "seq_id": pa.array([f"s{i}" for i in range(n)])})


def _writer(tmp_path: Path) -> AtlasWriter:
    from seqatlas.manifest import ModelRecord, ScoringRecord

    return AtlasWriter(tmp_path / "a", kind="protein",
                       model=ModelRecord(name="m", weights_sha256="0" * 64, tokenizer={}),
                       scoring=ScoringRecord(likelihood="none", embeddings=False))


def test_staged_parts_are_checked_renamed_and_recorded(tmp_path):
    with _writer(tmp_path) as writer:
        staging = writer.staging_area()
        assert staging.parent == tmp_path / "a" / STAGING
        staged = stage_parts(staging, "k" * 64, {"sequences": _table(5), "repeats": None})
        assert set(staged) == {"sequences"}
        writer.commit_staged("k" * 64, staged, unit={"input": "x"})
        name = part_name("k" * 64)
        assert not any(staging.iterdir())  # renamed out of the staging area
        assert writer.check_parts(full=True) == []
    assert not (tmp_path / "a" / STAGING).exists()  # removed on close
    reader = AtlasReader(tmp_path / "a")
    record = reader.manifest.table_parts("sequences")[name]
    assert (record.rows, record.sha256) == (5, staged["sequences"].sha256)
    assert record.bytes == (tmp_path / "a" / "sequences" / name).stat().st_size
    assert reader.manifest.units["k" * 64]["input"] == "x"


@pytest.mark.parametrize("damage, error, message", [
    ("missing", AtlasError, "does not see this atlas"),
    ("truncated", AtlasDamagedError, "bytes, the worker wrote"),
    ("rows", AtlasDamagedError, "rows, the worker wrote"),
    ("foreign name", AtlasError, "not one of its parts"),
])
def test_a_staged_part_that_does_not_check_out_is_not_committed(tmp_path, damage, error,
                                                                 message):
    key = "d" * 64
    with _writer(tmp_path) as writer:
        staging = writer.staging_area()
        part = stage_parts(staging, key, {"sequences": _table(4)})["sequences"]
        path = staging / part.staged
        if damage == "missing":
            path.unlink()
        elif damage == "truncated":
            path.write_bytes(path.read_bytes()[:-7])
        elif damage == "rows":
            part = StagedPart(**{**part.__dict__, "rows": 3})
        else:
            part = StagedPart(**{**part.__dict__, "staged": "../../atlas.json"})
        with pytest.raises(error, match=message):
            writer.commit_staged(key, {"sequences": part})
        assert key not in writer.manifest.units
        assert not writer.manifest.table_parts("sequences")
        assert not (tmp_path / "a" / "sequences" / part_name(key)).exists()
    assert (tmp_path / "a" / "atlas.json").exists()
    assert key not in AtlasReader(tmp_path / "a").manifest.units


def test_a_worker_that_cannot_see_the_staging_area_says_how_to_fix_it(tmp_path):
    with pytest.raises(AtlasError, match="--write-parts driver"):
        stage_parts(tmp_path / "gone", "k" * 64, {"sequences": _table(2)})
    assert not (tmp_path / "gone").exists()


def test_leftovers_of_a_crash_are_removed_when_a_writer_opens(tmp_path):
    with _writer(tmp_path) as writer:
        writer.commit("c" * 64, {"sequences": _table(3)})
        staging = writer.staging_area()
        stage_parts(staging, "s" * 64, {"sequences": _table(2)})
        # as if the driver died here: its staged parts and an unrecorded rename stay
        (tmp_path / "a" / "sequences" / part_name("u" * 64)).write_bytes(b"PAR1")
        writer._staging = None  # a crash never reaches close()
    leftovers = _files(tmp_path / "a")
    assert any(f.startswith(STAGING) for f in leftovers)
    reader = AtlasReader(tmp_path / "a")  # readers see only the committed part
    assert [p.name for p in reader.part_paths("sequences")] == [part_name("c" * 64)]
    with _writer(tmp_path):
        pass
    assert _files(tmp_path / "a") & {f"sequences/{part_name('c' * 64)}"}
    assert not any(f.startswith(STAGING) for f in _files(tmp_path / "a"))
    assert not (tmp_path / "a" / "sequences" / part_name("u" * 64)).exists()
    assert AtlasReader(tmp_path / "a").check_parts(full=True) == []
