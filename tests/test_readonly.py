"""Readers never write: every command that only reads an atlas (``ATLAS_ACCESS`` says which)
runs against an atlas made read-only (chmod, and a read-only bind mount where this machine
lets a test make one) and leaves every file byte for byte as it was, with no write even
attempted under the atlas (a Python audit hook sees every open for writing, rename, removal,
directory creation). What readers keep goes to ``$SEQATLAS_CACHE_DIR``."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import seqatlas
from seqatlas.cli.access import ATLAS_ACCESS, NOTES, READS, WRITES
from seqatlas.cli.main import main
from seqatlas.query.views import cached_stats
from seqatlas.store import AtlasReader
from tests.conftest import make_esm, random_protein, write_fasta
from tests.query_data import doubling_table

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PATH_EVENTS = {"os.rename": 2, "os.replace": 2, "os.remove": 1, "os.rmdir": 1, "os.mkdir": 1,
                "os.truncate": 1, "os.chmod": 1, "os.chown": 1, "os.utime": 1, "os.link": 2,
                "os.symlink": 2, "shutil.rmtree": 1, "shutil.copyfile": 2, "shutil.move": 2}


class _WriteWatch:
    """Every write attempted through Python under ``root`` while active (audit events)."""

    def __init__(self):
        self.root: str | None = None
        self.seen: list[str] = []
        sys.addaudithook(self)

    def __call__(self, event: str, args) -> None:
        root = self.root
        if root is None:
            return
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                (isinstance(flags, int) and flags & _WRITE_FLAGS)
            paths = [path] if writing else []
        elif event in _PATH_EVENTS:
            paths = list(args[:_PATH_EVENTS[event]])
        else:
            return
        for path in paths:
            if isinstance(path, (str, bytes, os.PathLike)):
                text = os.path.realpath(os.fsdecode(path))
                if text == root or text.startswith(root + os.sep):
                    self.seen.append(f"{event} {text}")


_WATCH = _WriteWatch()


def tree(root: Path) -> dict[str, tuple]:
    """Every file and directory under ``root``: mode, and size and SHA-256 of files."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            info = os.lstat(path)
            key = str(path.relative_to(root))
            if stat.S_ISREG(info.st_mode):
                found[key] = (info.st_mode, info.st_size,
                              hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                found[key] = (info.st_mode,)
    return found


def _read_only(root: Path, on: bool) -> None:
    for directory, dirs, files in os.walk(root):
        for name in [*dirs, *files, ""]:
            path = Path(directory, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                continue
            os.chmod(path, mode & ~0o222 if on else mode | 0o200)


@pytest.fixture(scope="module")
def full_atlas(tmp_path_factory) -> Path:
    """An atlas holding every table a reader reads: scores with distributions, embeddings,
    pooled rows, repeats, in-context copies and their probe, two indexes."""
    root = tmp_path_factory.mktemp("readonly")
    model = make_esm(root / "esm", context_tokens=66, layers=2)
    records = {}
    for i in range(4):
        copy = random_protein(14, 100 + i)
        records[f"p{i}"] = (random_protein(10, i) + copy + random_protein(12, 10 + i) + copy
                            + random_protein(8, 20 + i))
    write_fasta(root / "p.fa", records)
    atlas = root / "atlas"
    seqatlas.ingest(root / "p.fa", atlas=atlas, model=str(model), workers=0,
                    distributions="float16", progress="none")
    (root / "r.bed").write_text("p0\t5\t30\trep\t0\t+\np1\t0\t20\trep2\t0\t+\n")
    seqatlas.annotate(root / "r.bed", atlas=atlas)
    seqatlas.probe_icl(atlas, workers=0, progress="none")
    seqatlas.build_index(atlas, name="default", type="ivf-flat", nlist=4)
    seqatlas.build_index(atlas, name="seqs", level="pooled", type="flat")
    (root / "query.fa").write_text(f">q\n{records['p2']}\n")
    pq.write_table(doubling_table(), root / "doubling.parquet")
    return atlas


def _battery(atlas: Path, out: Path, inputs: Path | None = None) -> dict[str, list[str]]:
    """One command line per reading command (the output files go to ``out``; ``inputs``:
    where the fixture's query files are, by default beside the atlas)."""
    inputs = inputs or atlas.parent
    a = ["--atlas", str(atlas)]
    return {
        "info": ["info", str(atlas), "--json"],
        "verify": ["verify", *a],
        "log": ["log", *a, "--json"],
        "report": ["report", *a, "--doubling", str(inputs / "doubling.parquet"),
                   "-o", str(out / "report.html")],
        "index list": ["index", "list", *a],
        "query sql": ["query", "sql", "SELECT count(*) AS n, avg(z) AS z FROM position_z", *a],
        "query anomalies": ["query", "anomalies", *a, "--z", "1"],
        "query enrichment": ["query", "enrichment", *a, "--z", "1"],
        "query knn": ["query", "knn", *a, "--at", "p0:12", "-k", "3"],
        "query similar": ["query", "similar", *a, "--fasta", str(inputs / "query.fa"), "-k", "2"],
        "query identity": ["query", "identity", *a, "--sample", "20"],
        "export bedgraph": ["export", "bedgraph", *a, "-o", str(out / "t.bedgraph")],
        "export bigwig": ["export", "bigwig", *a, "-o", str(out / "t.bw")],
        "export bed": ["export", "bed", *a, "--z", "1", "-o", str(out / "t.bed")],
        "plot track": ["plot", "track", *a, "--region", "p0:0-58", "-o", str(out / "t.png")],
        "plot enrichment": ["plot", "enrichment", *a, "--z", "1", "-o", str(out / "e.png")],
        "plot distribution": ["plot", "distribution", *a, "-o", str(out / "d.png")],
        "plot identity": ["plot", "identity", *a, "--sample", "20", "-o", str(out / "i.png")],
        "plot icl": ["plot", "icl", *a, "-o", str(out / "icl.png")],
        "plot calibration": ["plot", "calibration", *a, "--index", "default",
                             "-o", str(out / "c.png")],
        "plot mutagenesis": ["plot", "mutagenesis", *a, "--seq-id", "p1",
                             "-o", str(out / "m.png")],
        "plot embedding": ["plot", "embedding", *a, "--color", "seq_id",
                           "-o", str(out / "pca.png")],
        "variants scan": ["variants", "scan", *a, "--region", "p1:0-10",
                          "-o", str(out / "scan.parquet")],
    }


def test_every_command_says_whether_it_writes_and_every_reader_is_tried(tmp_path):
    """``ATLAS_ACCESS`` names every command, its help says it, and the battery below runs
    every command marked as reading (a new reading command must join it)."""
    import typer.main

    from seqatlas.cli.main import app

    def walk(command, path):
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                yield from walk(sub, [*path, name])
        else:
            yield " ".join(path), command

    commands = dict(walk(typer.main.get_command(app), []))
    assert set(commands) == set(ATLAS_ACCESS)
    for name, command in commands.items():
        epilog = " ".join((command.epilog or "").split())
        access = ATLAS_ACCESS[name]
        assert epilog.split("Examples:")[0].strip(), name
        if access == READS:
            assert " ".join(NOTES[READS].split()) in epilog, name
        elif access == WRITES:
            assert "Writes" in epilog, name
    readers = {name for name, access in ATLAS_ACCESS.items() if access == READS}
    assert set(_battery(tmp_path, tmp_path)) == readers
    for name in ("ingest", "annotate", "probe icl", "index build", "repair", "compact", "pool"):
        assert ATLAS_ACCESS[name] == WRITES


def test_every_reader_leaves_a_read_only_atlas_as_it_was(full_atlas, tmp_path, monkeypatch,
                                                        capsys):
    """Cold and warm caches: each reading command exits 0, attempts no write under the
    atlas, and the tree (names, modes, bytes) is identical afterwards."""
    before = tree(full_atlas)
    assert not (full_atlas / ".verified").exists()
    out = tmp_path / "out"
    out.mkdir()
    cache = tmp_path / "cache"
    monkeypatch.setenv("SEQATLAS_CACHE_DIR", str(cache))
    _read_only(full_atlas, True)
    try:
        frozen = tree(full_atlas)
        for run in ("cold", "warm"):
            for name, argv in _battery(full_atlas, out).items():
                _WATCH.root, _WATCH.seen = os.path.realpath(full_atlas), []
                try:
                    code = main(argv)
                finally:
                    _WATCH.root = None
                captured = capsys.readouterr()
                assert code == 0, (run, name, captured.err[-2000:])
                assert _WATCH.seen == [], (run, name, _WATCH.seen)
                assert tree(full_atlas) == frozen, (run, name)
    finally:
        _read_only(full_atlas, False)
    assert tree(full_atlas) == before
    # what the readers derived went to the user's cache, keyed by the atlas
    reader = AtlasReader(full_atlas)
    assert reader.cache is not None and reader.cache.is_relative_to(cache)
    assert (reader.cache / "verified.log").stat().st_size > 0
    assert cached_stats(reader, "logp") is not None
    assert reader.manifest.cache is None  # nothing cached in the atlas state
    assert (out / "report.html").stat().st_size > 0 and (out / "t.bed").exists()


def test_the_library_readers_write_nothing_either(full_atlas, tmp_path, monkeypatch):
    """The Python API of the same readers (``Atlas`` methods, ``info``, ``verify``)."""
    monkeypatch.setenv("SEQATLAS_CACHE_DIR", str(tmp_path / "cache"))
    before = tree(full_atlas)
    _WATCH.root, _WATCH.seen = os.path.realpath(full_atlas), []
    try:
        atlas = seqatlas.Atlas(full_atlas)
        assert atlas.anomalies(z=1.0).num_rows >= 0
        n = atlas.sql("SELECT count(*) AS n FROM positions").column("n")[0].as_py()
        assert n == sum(p.rows for p in atlas.manifest.table_parts("positions").values())
        assert atlas.enrichment(z=1.0).num_rows > 0
        assert atlas.knn(at="p0:12", k=2).num_rows == 2
        assert seqatlas.verify(full_atlas)["damaged"] == []
        assert seqatlas.info(full_atlas)["tables"]["positions"]["rows"] == n
    finally:
        _WATCH.root = None
    assert _WATCH.seen == []
    assert tree(full_atlas) == before


def test_the_robust_statistics_follow_the_atlas_version(full_atlas, tmp_path, monkeypatch):
    """The cached statistics are per version: after a writer commits new positions, a
    reader of the new version computes (and caches) its own; the old entry is kept."""
    monkeypatch.setenv("SEQATLAS_CACHE_DIR", str(tmp_path / "cache"))
    copy = tmp_path / "atlas"
    shutil.copytree(full_atlas, copy)
    first = seqatlas.Atlas(copy)
    first.anomalies(z=1.0)
    old = cached_stats(first, "logp")
    assert old is not None
    write_fasta(tmp_path / "more.fa", {"x1": random_protein(40, 77)})
    seqatlas.ingest(tmp_path / "more.fa", atlas=copy, workers=0, progress="none")
    second = seqatlas.Atlas(copy)
    assert cached_stats(second, "logp") is None  # the new version's are not known yet
    second.anomalies(z=1.0)
    new = cached_stats(second, "logp")
    assert new is not None and new != old
    assert cached_stats(first, "logp") == old  # a reader still on the old version keeps its
    assert first.cache == second.cache  # one atlas, one cache directory
    # another atlas at the same place (removed and made again) starts a new cache
    shutil.rmtree(copy)
    shutil.copytree(full_atlas, copy)
    manifest = json.loads((copy / "atlas.json").read_text())
    manifest["created"] = "2030-01-01T00:00:00+00:00"
    (copy / "atlas.json").write_text(json.dumps(manifest))
    assert AtlasReader(copy).cache != first.cache


def test_a_writer_removes_the_verified_log_earlier_versions_kept_in_the_atlas(full_atlas,
                                                                             tmp_path):
    copy = tmp_path / "atlas"
    shutil.copytree(full_atlas, copy)
    (copy / ".verified").write_text('["positions/x", [1], "0"]\n')
    seqatlas.info(copy)
    assert (copy / ".verified").exists()  # a reader leaves it
    seqatlas.annotate(full_atlas.parent / "r.bed", atlas=copy)
    assert not (copy / ".verified").exists()


def _can_mount_read_only(tmp_path: Path) -> str | None:
    """Why a read-only bind mount cannot be made here (None: it can)."""
    if shutil.which("unshare") is None:
        return "no unshare(1)"
    source, target = tmp_path / "probe_src", tmp_path / "probe_dst"
    source.mkdir()
    target.mkdir()
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c",
         f"mount --bind -o ro '{source}' '{target}' && ! touch '{target}/x' 2>/dev/null"],
        capture_output=True, text=True)
    if done.returncode != 0:
        return f"no read-only bind mount in a user namespace here ({done.stderr.strip()})"
    return None


def test_every_reader_works_on_a_read_only_bind_mount(full_atlas, tmp_path):
    """The same battery in a child process that sees the atlas only through a read-only
    bind mount (writes fail there with EROFS, even for root)."""
    reason = _can_mount_read_only(tmp_path)
    if reason:
        pytest.skip(reason)
    mount = tmp_path / "mnt"
    mount.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    battery = tmp_path / "battery.json"
    battery.write_text(json.dumps(_battery(mount, out, full_atlas.parent)))
    before = tree(full_atlas)
    script = ("import json, sys; from seqatlas.cli.main import main; "
              f"b = json.load(open({str(battery)!r})); "
              "codes = {name: main(argv) for name, argv in b.items()}; "
              "print(json.dumps(codes)); sys.exit(any(codes.values()))")
    env = {**os.environ, "SEQATLAS_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c",
         f"mount --bind -o ro '{full_atlas}' '{mount}' && exec '{sys.executable}' -c "
         f"\"{script}\""], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    codes = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(codes) == {n for n, a in ATLAS_ACCESS.items() if a == READS}
    assert tree(full_atlas) == before


def _hammer(atlas: str, worker: int, rounds: int) -> list[str]:
    """One process's writes and reads of a shared atlas cache (see the test below)."""
    from seqatlas.store.integrity import VerifiedLog
    from seqatlas.store.reader_cache import read_value, write_value

    reader = AtlasReader(atlas)
    log = VerifiedLog(reader.path, reader.manifest)
    problems = []
    for i in range(rounds):
        payload = {"worker": worker, "i": i, "pad": "x" * (50 + 37 * ((worker + i) % 40))}
        write_value(reader.cache, "robust_z/logp-abc.json", payload)
        seen = read_value(reader.cache, "robust_z/logp-abc.json")
        if seen is not None and set(seen) != {"worker", "i", "pad"}:
            problems.append(f"a torn value: {seen!r}")
        log.record(f"positions/part-{worker}-{i}", [i, worker], "0" * 64)
    return problems


def test_the_reader_cache_is_safe_under_concurrent_processes(full_atlas, tmp_path,
                                                             monkeypatch):
    """Four processes write and read the same value and append to the same verified log:
    every value read is whole, and every appended line is there, whole."""
    from concurrent.futures import ProcessPoolExecutor

    from seqatlas.store.integrity import VerifiedLog

    monkeypatch.setenv("SEQATLAS_CACHE_DIR", str(tmp_path / "cache"))
    reader = AtlasReader(full_atlas)
    directory = reader.cache
    with ProcessPoolExecutor(4) as pool:
        results = list(pool.map(_hammer, [str(full_atlas)] * 4, range(4), [150] * 4))
    assert [p for r in results for p in r] == []
    log = VerifiedLog(full_atlas, reader.manifest)
    assert log.lines == 600
    assert {k for k in log.entries if k.startswith("positions/part-")} == \
        {f"positions/part-{w}-{i}" for w in range(4) for i in range(150)}
    assert not [p for p in directory.rglob("*") if ".tmp-" in p.name]
