"""Nothing lost, nothing overwritten, nothing silent: part checksums on every read path,
verify and repair, a manifest that lacks or misshapes its keys, outputs that never land in an
atlas or replace a special file, storage faults, and nan/inf at the CLI edge."""

from __future__ import annotations

import copy
import errno
import json
import os
import stat
import threading
from pathlib import Path

import pytest

import seqatlas
from seqatlas.cli.main import app, finite_float, main
from seqatlas.errors import AtlasDamagedError, AtlasError, ConfigError, SeqAtlasError
from seqatlas.store import AtlasReader
from tests.conftest import random_protein, write_fasta

OPTIONS = {"likelihood": "exact", "embeddings": True, "workers": 0, "progress": False}


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_esm):
    """A small atlas (two inputs, three units) with imported repeats, and its inputs."""
    root = tmp_path_factory.mktemp("integrity")
    a = write_fasta(root / "a.fa", {f"a{i}": random_protein(40 + 7 * i, i) for i in range(3)})
    b = write_fasta(root / "b.fa", {"b0": random_protein(45, 9)})
    bed = root / "rep.bed"
    bed.write_text("a0\t2\t12\tAluY\t0\t+\na1\t5\t30\t(CA)n\t0\t-\n")
    atlas = root / "atlas"
    seqatlas.ingest([a, b], atlas=atlas, model=str(tiny_esm), unit_tokens=60, **OPTIONS)
    seqatlas.annotate(bed, atlas=atlas)
    return {"atlas": atlas, "inputs": [a, b], "bed": bed, "model": tiny_esm}


def _copy(built, tmp_path) -> Path:
    import shutil

    target = tmp_path / "atlas"
    shutil.copytree(built["atlas"], target)
    return target


def _tables(atlas: Path) -> dict:
    reader = AtlasReader(atlas)
    return {"sequences": reader.sequences(), "positions": reader.positions().sort_by(
        [("seq_id", "ascending"), ("pos", "ascending")]), "tokens": reader.tokens().sort_by(
        [("token_id", "ascending")]), "repeats": reader.repeats()}


def _part(atlas: Path, table: str) -> Path:
    return sorted((atlas / table).glob("part-*.parquet"))[0]


def test_parts_record_size_and_sha256_and_page_checksums(built):
    import pyarrow.parquet as pq

    from seqatlas.util import file_sha256

    reader = AtlasReader(built["atlas"])
    for table in ("sequences", "positions", "tokens", "repeats"):
        parts = reader.manifest.table_parts(table)
        assert parts, table
        for name, record in parts.items():
            path = built["atlas"] / table / name
            assert record.bytes == path.stat().st_size
            assert record.sha256 == file_sha256(path)
            column = pq.ParquetFile(path).metadata.row_group(0).column(0)
            assert column.total_compressed_size > 0
    # page checksums were written: a flipped byte inside a data page fails pyarrow's own
    # verification even when the manifest's checks are bypassed
    path = _part(built["atlas"], "positions")
    data = bytearray(path.read_bytes())
    start = pq.ParquetFile(path).metadata.row_group(0).column(2).data_page_offset
    data[start + 40] ^= 0xFF
    import io

    with pytest.raises(OSError):
        pq.read_table(io.BytesIO(bytes(data)), page_checksum_verification=True)


def test_every_byte_flip_of_a_part_is_refused_by_every_read_path(built, tmp_path):
    """Each offset of a small part (its footer included), flipped: the Atlas, the SQL
    engine and info all refuse it by name; no read returns different rows."""
    from seqatlas.query.sandbox import Sandbox

    atlas = _copy(built, tmp_path)
    path = _part(atlas, "repeats")
    original = path.read_bytes()
    expected = AtlasReader(atlas).repeats()
    assert len(original) < 20000
    outcomes = {"error": 0, "same": 0}
    for offset in range(len(original)):
        flipped = bytearray(original)
        flipped[offset] ^= 0x5A
        path.write_bytes(bytes(flipped))
        try:
            rows = AtlasReader(atlas).repeats()
        except AtlasDamagedError as exc:
            assert path.name in str(exc)
            outcomes["error"] += 1
        else:
            assert rows.equals(expected), offset
            outcomes["same"] += 1
        if offset % 97 == 0 or offset >= len(original) - 8:  # the SQL engine and info
            with pytest.raises(AtlasDamagedError, match=path.name):
                Sandbox(atlas).close()
            assert seqatlas.info(atlas)["damaged"]
    assert outcomes["error"] == len(original)
    path.write_bytes(original)
    assert AtlasReader(atlas).repeats().equals(expected)


def test_a_changed_part_is_caught_even_with_its_times_restored(built, tmp_path):
    atlas = _copy(built, tmp_path)
    path = _part(atlas, "positions")
    info = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))  # same size, same mtime
    with pytest.raises(AtlasDamagedError, match="SHA-256"):
        AtlasReader(atlas).positions()


def test_unchanged_parts_are_not_hashed_again(built, tmp_path, monkeypatch):
    import seqatlas.store.integrity as integrity

    atlas = _copy(built, tmp_path)
    seqatlas.query.sql(atlas, "SELECT 1")  # the copy has new inodes: each part hashed here
    calls = []
    real = integrity.file_sha256
    monkeypatch.setattr(integrity, "file_sha256", lambda p: calls.append(p) or real(p))
    AtlasReader(atlas).positions()
    seqatlas.query.sql(atlas, "SELECT count(*) FROM positions")
    assert calls == []


@pytest.mark.parametrize("fault", ["deleted", "truncated", "appended"])
def test_damaged_part_is_named_by_info_query_and_cli(built, tmp_path, capsys, fault):
    atlas = _copy(built, tmp_path)
    path = _part(atlas, "positions")
    if fault == "deleted":
        path.unlink()
    elif fault == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    else:
        path.write_bytes(path.read_bytes() + b"\0")
    assert seqatlas.info(atlas)["damaged"] == [
        f"positions/{path.name}: " + ("missing" if fault == "deleted" else
                                      AtlasReader(atlas).check_parts(["positions"])[0].problem)]
    for argv in (["info", str(atlas)], ["query", "sql", "SELECT 1 FROM positions", "--atlas",
                                        str(atlas)], ["verify", "--atlas", str(atlas)],
                 ["export", "bedgraph", "--atlas", str(atlas), "--column", "logp", "-o",
                  str(tmp_path / "x.bedgraph")]):
        capsys.readouterr()
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert path.name in err or "damaged" in err, argv
        assert "Traceback" not in err
    assert not (tmp_path / "x.bedgraph").exists()


def test_rerunning_the_ingest_restores_a_deleted_part(built, tmp_path):
    atlas = _copy(built, tmp_path)
    before = _tables(atlas)
    victim = _part(atlas, "positions")
    victim.unlink()
    report = seqatlas.ingest(built["inputs"], atlas=atlas, model=str(built["model"]),
                             unit_tokens=60, **OPTIONS)
    assert report.units_repaired == 1 and report.units_scored == 1
    after = _tables(atlas)
    for table in before:
        assert after[table].equals(before[table]), table
    assert seqatlas.verify(atlas)["ok"]


def test_repair_rewrites_every_damaged_table_from_the_inputs(built, tmp_path, capsys):
    atlas = _copy(built, tmp_path)
    before = _tables(atlas)
    for table in ("sequences", "positions", "tokens", "repeats"):
        path = _part(atlas, table)
        data = bytearray(path.read_bytes())
        data[len(data) // 3] ^= 0x10
        path.write_bytes(bytes(data))
    report = seqatlas.verify(atlas)
    assert not report["ok"] and {d["table"] for d in report["damaged"]} == {
        "sequences", "positions", "tokens", "repeats"}
    assert main(["repair", "--atlas", str(atlas), "--workers", "0", "--no-progress"]) == 0
    assert "repaired 4 damaged part(s)" in capsys.readouterr().err
    assert seqatlas.verify(atlas)["ok"]
    after = _tables(atlas)
    for table in before:
        assert after[table].equals(before[table]), table
    assert main(["repair", "--atlas", str(atlas)]) == 0
    assert "nothing to repair" in capsys.readouterr().err


def test_repair_without_the_input_says_what_is_missing(built, tmp_path):
    import shutil

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    moved = [Path(shutil.copy(p, inputs / p.name)) for p in built["inputs"]]
    atlas = tmp_path / "atlas"
    seqatlas.ingest(moved, atlas=atlas, model=str(built["model"]), unit_tokens=60, **OPTIONS)
    _part(atlas, "sequences").write_bytes(b"garbage")
    moved[0].unlink()
    with pytest.raises(SeqAtlasError, match="a.fa: not found"):
        seqatlas.repair(atlas, workers=0, progress=False)


# --- a manifest without its keys ---------------------------------------------------------------

def _key_paths(node, prefix=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield prefix + (key,)
            yield from _key_paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node[:1]):
            yield prefix + (i,)
            yield from _key_paths(value, prefix + (i,))


def _mutated(data, path, how):
    data = copy.deepcopy(data)
    node = data
    for key in path[:-1]:
        node = node[key]
    if how == "drop":
        del node[path[-1]]
    else:
        node[path[-1]] = how
    return data


@pytest.mark.slow
def test_a_manifest_missing_or_misshaping_any_key_never_gives_a_traceback(built, tmp_path,
                                                                           capsys):
    atlas = _copy(built, tmp_path)
    good = json.loads((atlas / "atlas.json").read_text())
    commands = [["info", str(atlas)],  # prints every field
                ["query", "sql", "SELECT count(*) FROM tokens, positions", "--atlas",
                 str(atlas)]]  # reads the parts, with the tokens schema from the model
    tried = 0
    for n, path in enumerate(_key_paths(good)):
        for how in ("drop", None, "x", (7, [], {}, True)[n % 4]):
            bad = _mutated(good, path, how)
            (atlas / "atlas.json").write_text(json.dumps(bad))
            for argv in commands:
                code = main(argv)  # anything but a SeqAtlasError would raise here
                assert code in (0, 1), (path, how, argv)
                tried += 1
    capsys.readouterr()
    assert tried > 500
    (atlas / "atlas.json").write_text(json.dumps({"schema_version": 2}))
    assert main(["info", str(atlas)]) == 1
    assert "atlas.json is corrupt" in capsys.readouterr().err


def test_a_hostile_part_name_in_the_manifest_is_refused(built, tmp_path):
    atlas = _copy(built, tmp_path)
    data = json.loads((atlas / "atlas.json").read_text())
    record = next(iter(data["parts"]["positions"].values()))
    data["parts"]["positions"]["../../../etc/passwd"] = record
    (atlas / "atlas.json").write_text(json.dumps(data))
    with pytest.raises(AtlasError, match="corrupt"):
        AtlasReader(atlas)


# --- outputs ----------------------------------------------------------------------------------

def _sql_to(atlas: Path, output) -> int:
    return main(["query", "sql", "SELECT seq_id, length FROM sequences ORDER BY ordinal",
                 "--atlas", str(atlas), "-o", str(output), "--format", "csv"])


def test_an_output_inside_an_atlas_is_refused(built, tmp_path, capsys):
    atlas = _copy(built, tmp_path)
    seqatlas.query.sql(atlas, "SELECT 1")

    def files():
        return {p: p.read_bytes() for p in atlas.rglob("*") if p.is_file()}

    snapshot = files()
    targets = [atlas / "atlas.json", _part(atlas, "positions"), atlas / "new.csv",
               atlas / "positions" / "new.parquet", atlas / "positions"]
    link = tmp_path / "sneaky.csv"
    link.symlink_to(atlas / "atlas.json")
    targets.append(link)
    for target in targets:
        assert _sql_to(atlas, target) == 1, target
        assert main(["export", "bedgraph", "--atlas", str(atlas), "--column", "logp", "-o",
                     str(target)]) == 1, target
        err = capsys.readouterr().err
        assert "inside the atlas" in err or "is a directory" in err, err
    assert files() == snapshot
    assert link.is_symlink()


def test_outputs_to_special_files_are_written_in_place(built, tmp_path, capfd):
    atlas = built["atlas"]
    # a symlink to this process's stdout: written through, the link stays a link
    link = tmp_path / "out-link"
    link.symlink_to("/proc/self/fd/1")
    capfd.readouterr()
    assert _sql_to(atlas, link) == 0
    assert capfd.readouterr().out.startswith('"seq_id","length"\n"a0",40\n')
    assert link.is_symlink() and os.readlink(link) == "/proc/self/fd/1"
    # "-" is standard output
    assert _sql_to(atlas, "-") == 0
    assert '"a0",40' in capfd.readouterr().out
    # /dev/null stays a character device
    assert _sql_to(atlas, "/dev/null") == 0
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    # a FIFO: written in place (a reader gets the rows), still a FIFO afterwards
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    assert _sql_to(atlas, fifo) == 0
    reader.join(10)
    assert b'"a0",40' in received[0] and stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_a_symlink_to_a_regular_file_keeps_the_link_and_replaces_its_target(built, tmp_path):
    target = tmp_path / "real.csv"
    target.write_text("old")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    assert _sql_to(built["atlas"], link) == 0
    assert link.is_symlink() and '"a0",40' in target.read_text()


def test_output_writer_leaves_nothing_on_error(tmp_path):
    from seqatlas.util import output_file

    target = tmp_path / "out.txt"
    target.write_text("keep")
    with pytest.raises(RuntimeError):
        with output_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    with pytest.raises(ConfigError, match="does not exist"):
        with output_file(tmp_path / "missing" / "x.csv"):
            pass


# --- storage faults ---------------------------------------------------------------------------

def test_a_full_disk_mid_ingest_commits_nothing_partial_and_a_rerun_completes(
        built, tmp_path, monkeypatch, capsys):
    import pyarrow.parquet as pq

    atlas = tmp_path / "atlas"
    fasta = built["inputs"][0]
    real = pq.write_table
    calls = {"n": 0}

    def full_disk(table, where, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # the second scored unit's positions part
            with open(where, "wb") as fh:
                fh.write(b"PAR1 half a part")
            raise OSError(errno.ENOSPC, "No space left on device", str(where))
        return real(table, where, **kwargs)

    monkeypatch.setattr(pq, "write_table", full_disk)
    argv = ["ingest", str(fasta), "--atlas", str(atlas), "--model", str(built["model"]),
            "--workers", "0", "--unit-tokens", "60", "--no-progress"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "the disk is full" in err and "Traceback" not in err
    committed = AtlasReader(atlas)
    assert not [p for p in atlas.rglob(".*tmp-*")]
    assert seqatlas.verify(atlas)["ok"]
    units_before = len(committed.manifest.units)
    monkeypatch.setattr(pq, "write_table", real)
    assert main(argv) == 0
    clean = tmp_path / "clean"
    seqatlas.ingest(fasta, atlas=clean, model=str(built["model"]), unit_tokens=60, **OPTIONS)
    assert len(AtlasReader(atlas).manifest.units) > units_before
    assert _tables(atlas)["positions"].equals(_tables(clean)["positions"])


def test_a_read_only_atlas_is_a_clean_error(built, tmp_path, monkeypatch, capsys):
    atlas = _copy(built, tmp_path)
    manifest = (atlas / "atlas.json").read_bytes()
    real_replace = os.replace

    def read_only(src, dst, *args, **kwargs):
        if str(atlas) in str(dst):
            raise OSError(errno.EROFS, "Read-only file system", str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", read_only)
    assert main(["annotate", str(built["bed"]), "--atlas", str(atlas), "--names",
                 "exact"]) == 0  # already imported: nothing to write
    other = tmp_path / "other.bed"
    other.write_text("a2\t1\t9\tL1\t0\t+\n")
    assert main(["annotate", str(other), "--atlas", str(atlas)]) == 1
    err = capsys.readouterr().err
    assert "read-only" in err and "Traceback" not in err
    assert (atlas / "atlas.json").read_bytes() == manifest
    assert not [p for p in atlas.rglob(".*tmp-*")]
    monkeypatch.setattr(os, "replace", real_replace)
    assert main(["annotate", str(other), "--atlas", str(atlas)]) == 0


# --- numbers at the CLI edge --------------------------------------------------------------------

def _float_parameters(typer_app, prefix=()):
    import inspect
    import typing

    import typer

    for info in typer_app.registered_commands:
        hints = typing.get_type_hints(info.callback)
        name = info.name or info.callback.__name__
        for parameter in inspect.signature(info.callback).parameters.values():
            if isinstance(parameter.default, typer.models.ParameterInfo) and \
                    float in (typing.get_args(hints[parameter.name]) or (hints[parameter.name],)):
                yield prefix + (name,), parameter.name, parameter.default
    for group in typer_app.registered_groups:
        yield from _float_parameters(group.typer_instance, prefix + (group.name,))


def test_every_float_option_refuses_nan_and_infinity():
    found = list(_float_parameters(app))
    assert len(found) >= 5
    for command, name, info in found:
        assert info.parser is finite_float, (command, name)
    import typer

    for text in ("nan", "NaN", "inf", "-inf", "1e400", "x"):
        with pytest.raises(typer.BadParameter):
            finite_float(text)
    assert finite_float("2.5") == 2.5


@pytest.mark.parametrize("argv", [
    ["query", "sql", "SELECT 1", "--timeout", "nan"],
    ["query", "sql", "SELECT 1", "--timeout", "inf"],
    ["query", "anomalies", "--z", "nan"],
    ["export", "bed", "-o", "x.bed", "--z", "-inf"],
    ["query", "enrichment", "--z", "1e999"],
])
def test_non_finite_numbers_are_usage_errors(built, argv, capsys):
    assert main([*argv, "--atlas", str(built["atlas"])]) == 2
    err = capsys.readouterr().err
    assert "finite" in err and "Traceback" not in err
