"""A concurrent load on one atlas: reader processes loop over ``query sql``, ``anomalies``,
``knn``, ``info`` and ``report`` (the library calls behind those commands, a fresh
:class:`seqatlas.Atlas` per query) while CLI writers extend the atlas (``seqatlas ingest``)
and rebuild its index (``seqatlas index build``), in stages whose commands run side by side
(an index build beside an ingest records its index once the ingest has ended). Shared by
``tests/test_concurrent_load.py`` and ``benchmarks/concurrent_load.py``.

The consistency oracle: every answer must equal the answer of the version its reader
opened. Each writer runs through this file's ``writer`` driver, which stops after every
commit (``AtlasWriter._commit``) until the controller has copied the atlas, quiescent at
that version, into a snapshot (then waits ``hold`` seconds, so that readers meet the
versions between a run's first commit and its last). Once the load is over, each
(op, version) that some reader answered is run again on that version's snapshot, moved to
the atlas's own path (answers name it), nothing else running: that is the reference. An
answer is consistent iff its digest equals the reference's; an answer from a version no
writer committed (no snapshot) is an error, and so is a query that fails.

Digests are of canonical answers: rows sorted, floats rounded to 6 significant digits, and
for the report its HTML without the images (their pixels may move with the last bits of a
float).

Run as a script this file is one process of the load::

    python tests/load_harness.py writer --sync DIR [--hold S] -- ingest more.fa --atlas A
    python tests/load_harness.py reader --atlas A --control DIR --out FILE --mix sql,knn
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HARNESS = Path(__file__).resolve()

OPS = ("sql", "anomalies", "knn", "info", "report")
SQL = """
    SELECT s.seq_id, s.length, p.n AS positions, p.logp, t.n AS tokens,
           (SELECT count(*) FROM anomalies) AS anomalous_positions
    FROM sequences s
    LEFT JOIN (SELECT seq_id, count(*) AS n, sum(logp) AS logp FROM positions
               GROUP BY seq_id) p USING (seq_id)
    LEFT JOIN (SELECT seq_id, count(*) AS n FROM tokens GROUP BY seq_id) t USING (seq_id)
    ORDER BY s.seq_id"""
# a random model's scores are flat: single positions at |z| >= 2 make a few dozen regions
ANOMALY = {"z": 2.0, "min_length": 1}
KNN_AT = ["base-0:5", "base-2:30"]  # stored tokens whose neighbours knn looks up
KNN_K = 10
REPORT = {"top_regions": 1, "identity_sample": 50, "image_size": (200, 150)}
PNG = re.compile(r"data:image/png;base64,[A-Za-z0-9+/=]*")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
POLL = 0.002  # seconds between looks at the sync directory
PAUSE_TIMEOUT = 600.0  # a writer waiting longer for its snapshot gives up
ABORT = "abort"  # in the sync directory: the controller has gone, writers stop


class HarnessError(Exception):
    """A reader broke a rule of the load (e.g. its atlas moved during a query)."""


# -- answers -------------------------------------------------------------------------------

def canonical(value):
    """``value`` with floats rounded to 6 significant digits (NaN and infinities as text)."""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return float(f"{value:.6g}") + 0.0  # + 0.0: -0.0 becomes 0.0
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)


def _text(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def table_payload(table) -> dict:
    rows = sorted((canonical(row) for row in table.to_pylist()), key=_text)
    return {"columns": table.column_names, "rows": rows}


def digest(payload) -> str:
    return hashlib.sha256(_text(payload).encode()).hexdigest()[:16]


def _unmoved(atlas, version) -> None:
    if atlas.version != version:
        raise HarnessError(f"the reader's Atlas moved from version {version} to "
                           f"{atlas.version} during the query (a reader committed)")


def op_sql(path: str, scratch: Path):
    from seqatlas import Atlas

    atlas = Atlas(path)
    version = atlas.version
    table = atlas.sql(SQL)
    _unmoved(atlas, version)
    return version, table_payload(table)


def op_anomalies(path: str, scratch: Path):
    from seqatlas import Atlas

    atlas = Atlas(path)
    version = atlas.version
    table = atlas.anomalies(**ANOMALY)
    _unmoved(atlas, version)
    return version, table_payload(table)


def op_knn(path: str, scratch: Path):
    from seqatlas import Atlas

    atlas = Atlas(path)
    version = atlas.version
    table = atlas.knn(at=KNN_AT, k=KNN_K)
    _unmoved(atlas, version)
    return version, table_payload(table)


def op_info(path: str, scratch: Path):
    import seqatlas

    summary = seqatlas.info(path)
    return summary["version"], canonical(summary)


def op_report(path: str, scratch: Path):
    from seqatlas import html_report
    from seqatlas.query import AnomalyParams

    opened = []

    class Recorded(html_report.Atlas):  # the version the report's answer comes from
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            opened.append((self, self.version))

    output = scratch / "report.html"
    html_report.Atlas = Recorded
    try:
        html_report.report(path, output=output, params=AnomalyParams(**ANOMALY), **REPORT)
    finally:
        html_report.Atlas = Recorded.__base__
    if len(opened) != 1:
        raise HarnessError(f"the report opened {len(opened)} atlases, not 1")
    (atlas, version), = opened
    _unmoved(atlas, version)
    return version, {"html": PNG.sub("data:image/png;base64,", output.read_text())}


OP_FUNCTIONS = {"sql": op_sql, "anomalies": op_anomalies, "knn": op_knn, "info": op_info,
                "report": op_report}


def save_payload(directory: Path, op: str, key: str, payload) -> None:
    """Keep one copy of each distinct answer (to show what differs)."""
    target = directory / f"{op}-{key}.json"
    if target.exists():
        return
    tmp = directory / f".{target.name}.{os.getpid()}"
    tmp.write_text(_text(payload))
    os.replace(tmp, target)


def difference(op: str, got, want) -> str:
    """A line or two saying how answer ``got`` differs from ``want``."""
    if got is None or want is None:
        return "(answer not kept)"
    if op == "report":
        a, b = got["html"].split("<"), want["html"].split("<")
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return f"HTML differs at element {i}: got <{x[:120]!r}, want <{y[:120]!r}"
        return f"HTML has {len(a)} elements, want {len(b)}"
    if "rows" in got and "rows" in want:
        extra = [r for r in got["rows"] if r not in want["rows"]]
        missing = [r for r in want["rows"] if r not in got["rows"]]
        return (f"{len(got['rows'])} rows (want {len(want['rows'])}); "
                f"{len(extra)} unexpected, e.g. {extra[:1]}; {len(missing)} missing, "
                f"e.g. {missing[:1]}")
    keys = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    return "; ".join(f"{k}: got {_text(got.get(k))[:160]}, want {_text(want.get(k))[:160]}"
                     for k in keys[:3])


# -- the reader process --------------------------------------------------------------------

def expand_mix(mix: dict[str, int]) -> list[str]:
    """``{"sql": 2, "knn": 1}`` -> ``["sql", "knn", "sql"]``: ops interleaved by weight."""
    order, left = [], dict(mix)
    while any(left.values()):
        for op in OPS:
            if left.get(op, 0) > 0:
                order.append(op)
                left[op] -= 1
    return order


def reader_main(args) -> int:
    warnings.simplefilter("ignore")
    control = Path(args.control)
    scratch = control / f"reader-{args.number}"
    scratch.mkdir(parents=True, exist_ok=True)
    payloads = control / "payloads"
    order = args.mix.split(",")
    stop, go = control / "stop", control / "go"
    with open(args.out, "a") as out:
        def one(op: str, phase: str) -> None:
            started, clock = time.time(), time.perf_counter()
            version = key = error = None
            try:
                version, payload = OP_FUNCTIONS[op](args.atlas, scratch)
                key = digest(payload)
                save_payload(payloads, op, key, payload)
            except Exception:
                error = traceback.format_exc()
            out.write(_text({"reader": args.number, "op": op, "phase": phase,
                             "version": version, "digest": key, "error": error,
                             "start": started, "latency": time.perf_counter() - clock}) + "\n")
            out.flush()

        for op in dict.fromkeys(order):  # imports and caches, outside the timed loop
            if op == "report":  # seconds of drawing; its imports are what is slow to load
                import matplotlib.backends.backend_agg  # noqa: F401
                import seqatlas.html_report  # noqa: F401
            else:
                one(op, "warmup")
        (control / f"ready-{args.number}").touch()
        parent = os.getppid()
        while not go.exists() and os.getppid() == parent:
            time.sleep(POLL)
        i = args.number
        while not stop.exists() and os.getppid() == parent:  # never outlive the controller
            one(order[i % len(order)], "load")
            i += 1
    return 0


# -- the writer driver ---------------------------------------------------------------------

def writer_main(args) -> int:
    """Run the seqatlas CLI with ``args.command``, pausing after each commit until the
    controller acknowledges it."""
    from seqatlas.store.writer import AtlasWriter

    sync = Path(args.sync)
    commit = AtlasWriter._commit

    def paused_commit(self, actions, operation):
        before = self.manifest.log_version
        commit(self, actions, operation)
        version = self.manifest.log_version
        if version is None or version == before:
            return
        name = f"{version:08d}"
        tmp = sync / f".{name}.tmp"
        tmp.write_text(_text({"version": version, "operation": operation,
                              "pid": os.getpid(), "time": time.time()}))
        os.replace(tmp, sync / f"{name}.commit")
        deadline = time.monotonic() + PAUSE_TIMEOUT
        while not (sync / f"{name}.ack").exists():
            if time.monotonic() > deadline or (sync / ABORT).exists():
                raise RuntimeError(f"no acknowledgement of version {version}: the load "
                                   "was stopped")
            time.sleep(POLL)
        time.sleep(args.hold)

    AtlasWriter._commit = paused_commit
    from seqatlas.cli.main import run

    sys.argv = ["seqatlas", *args.command]
    run()
    return 0


# -- the controller ------------------------------------------------------------------------

@dataclass
class Fixture:
    """A small atlas (with an index) and the FASTA files that the load's ingests add."""

    atlas: Path
    model: Path
    extensions: list[Path]
    sequences: int  # in the atlas now
    added: int  # sequences the extensions add
    unit_tokens: int
    batch_tokens: int


def build_fixture(workdir: Path, *, base: list[str], extensions: list[list[str]],
                  model: Path | None = None, unit_tokens: int = 2000,
                  batch_tokens: int = 4096) -> Fixture:
    """Ingest the ``base`` sequences (``base-0``, ``base-1``, ...) into ``workdir/atlas`` with
    ``model`` (default: a tiny random ESM-2-style checkpoint made here, 34 tokens of context),
    storing float16 embeddings; build its index; write each list of ``extensions`` as the
    FASTA file ``extension-J.fa`` (``extJ-0``, ``extJ-1``, ...). ``unit_tokens``: the
    ingest's work unit, one commit each (~35 computed tokens per residue with this model)."""
    import seqatlas
    from tests.conftest import make_esm, write_fasta

    if len(base) < 3 or len(base[2]) <= 30:
        raise ValueError(f"knn looks up {KNN_AT}: give at least 3 base sequences, the third "
                         "longer than 30")
    workdir.mkdir(parents=True, exist_ok=True)
    model = model or make_esm(workdir / "model")
    base_fasta = write_fasta(workdir / "base.fa", {f"base-{i}": s for i, s in enumerate(base)})
    files = [write_fasta(workdir / f"extension-{j}.fa",
                         {f"ext{j}-{i}": s for i, s in enumerate(records)})
             for j, records in enumerate(extensions, start=1)]
    atlas = workdir / "atlas"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a random model is out of domain, as it says
        seqatlas.ingest(base_fasta, atlas=atlas, model=str(model), workers=0, progress=False,
                        unit_tokens=unit_tokens, batch_tokens=batch_tokens)
    seqatlas.build_index(atlas)
    return Fixture(atlas=atlas, model=model, extensions=files, sequences=len(base),
                   added=sum(len(records) for records in extensions),
                   unit_tokens=unit_tokens, batch_tokens=batch_tokens)


def ingest_command(fixture: Fixture, fasta: Path) -> list[str]:
    """``seqatlas ingest`` of ``fasta`` into the fixture's atlas, in this process (no Ray)."""
    return ["ingest", str(fasta), "--atlas", str(fixture.atlas), "--workers", "0",
            "--no-progress", "--unit-tokens", str(fixture.unit_tokens), "--batch-tokens",
            str(fixture.batch_tokens)]


def index_command(fixture: Fixture) -> list[str]:
    return ["index", "build", "--atlas", str(fixture.atlas), "--no-progress"]


@dataclass
class LoadConfig:
    readers: int = 8
    seconds: float = 30.0  # the load lasts at least this long, and until the writers end
    # ops and their weights in a reader's loop; a list: reader i runs mix[i % len(mix)]
    mix: dict[str, int] | list[dict[str, int]] = field(
        default_factory=lambda: {op: 1 for op in OPS})
    # writer stages, one after another; the commands (seqatlas CLI args) of a stage run side
    # by side, each started once the one before has committed (an index build beside an
    # ingest then records its index when the ingest has ended: an ingest started while a
    # build records fails, the lock being taken)
    stages: list[list[list[str]]] = field(default_factory=list)
    rebuild: list[str] | None = None  # repeated after the stages until `seconds` have passed
    gap: float = 1.0  # seconds between writer stages (readers alone on the atlas)
    # seconds a writer waits after each commit: a tiny model scores a unit in milliseconds,
    # and readers should see the versions between the first commit and the last
    hold: float = 0.0
    reader_timeout: float = 600.0  # to warm up
    stop_grace: float = 120.0  # for queries in flight when the load ends; then dropped


@dataclass
class WriterStep:
    stage: int
    command: list[str]
    pid: int
    returncode: int | None
    seconds: float
    commits: list[dict]
    log: str  # the tail of its stdout and stderr


@dataclass
class Problem:
    kind: str  # error | inconsistent | unreferenced | reference | reader | writer
    op: str | None
    version: int | None
    reader: int | None
    message: str


@dataclass
class LoadResult:
    config: LoadConfig
    seconds: float  # from the start of the load to the last answer
    records: list[dict]
    writers: list[WriterStep]
    commits: list[dict]  # every version a writer committed (with its snapshot)
    initial_version: int
    final_version: int | None
    final_sequences: int | None
    versions_seen: set[int]
    problems: list[Problem]
    reference_seconds: float

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.kind != "inconsistent"]

    @property
    def inconsistent(self) -> list[Problem]:
        return [p for p in self.problems if p.kind == "inconsistent"]

    @property
    def ok(self) -> bool:
        return not self.problems

    def op_stats(self) -> list[dict]:
        import numpy as np

        rows = []
        load = [r for r in self.records if r["phase"] == "load"]
        for op in [*OPS, "all"]:
            mine = [r for r in load if op in ("all", r["op"])]
            if not mine:
                continue
            answered = np.array([r["latency"] for r in mine if r["error"] is None]) * 1000
            p50, p95, p99 = (np.percentile(answered, [50, 95, 99]) if len(answered)
                             else (math.nan,) * 3)
            rows.append({
                "op": op, "count": len(mine), "qps": len(mine) / max(self.seconds, 1e-9),
                "p50_ms": p50, "p95_ms": p95, "p99_ms": p99,
                # unchecked: at a version no writer committed, or its reference failed
                "errors": sum(1 for r in mine if r["verdict"] in ("error", "unchecked")),
                "inconsistent": sum(1 for r in mine if r["verdict"] == "inconsistent"),
                "versions": len({r["version"] for r in mine if r["version"] is not None}),
                "answers": len({r["digest"] for r in mine if r["digest"] is not None})})
        return rows


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # one thread per process: there are more processes than cores already, and BLAS and
    # OpenMP threads that wait for a busy core spin
    for name in THREAD_VARIABLES:
        env.setdefault(name, "1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


class _Snapshots:
    """Copies the atlas at each version a writer paused at, then lets the writer go on."""

    def __init__(self, atlas: Path, sync: Path, directory: Path):
        self.atlas, self.sync, self.directory = atlas, sync, directory
        self.commits: list[dict] = []
        self.problems: list[Problem] = []
        self.done: set[str] = set()

    def take(self, version: int) -> None:
        from seqatlas.store import AtlasReader
        from seqatlas.store.staging import STAGING

        target = self.directory / f"{version:08d}"
        shutil.copytree(self.atlas, target, ignore=shutil.ignore_patterns(STAGING, ".lock"))
        copied = AtlasReader(target).version
        if copied != version:
            self.problems.append(Problem(
                "unreferenced", None, version, None,
                f"the atlas was at version {copied} when the writer paused after committing "
                f"{version}: something else committed meanwhile"))

    def poll(self) -> None:
        for entry in sorted(os.scandir(self.sync), key=lambda e: e.name):
            if entry.name.startswith(".") or not entry.name.endswith(".commit") or \
                    entry.name in self.done:
                continue
            marker = json.loads(Path(entry.path).read_text())
            self.take(marker["version"])
            (self.sync / entry.name.replace(".commit", ".ack")).touch()
            self.done.add(entry.name)
            self.commits.append({**marker, "snapshot_time": time.time()})


class _Writers(threading.Thread):
    """The writer stages one after another (see :attr:`LoadConfig.stages`), then index
    rebuilds until the load's time is up."""

    def __init__(self, config: LoadConfig, control: Path, snapshots: _Snapshots,
                 started: float):
        super().__init__(daemon=True)
        self.config, self.control, self.started = config, control, started
        self.snapshots, self.sync = snapshots, snapshots.sync
        self.steps: list[WriterStep] = []
        self.processes: list[subprocess.Popen] = []
        self.stopped = False

    def _next(self, stage: int) -> list[list[str]] | None:
        config = self.config
        if stage < len(config.stages):
            return [list(c) for c in config.stages[stage]]
        if config.rebuild and time.time() - self.started < config.seconds:
            return [list(config.rebuild)]
        return None

    def run(self) -> None:
        stage = 0
        while not self.stopped and (commands := self._next(stage)) is not None:
            if stage:
                time.sleep(self.config.gap)
            running = []
            for command in commands:
                if running:
                    self._first_commit(running[-1][1])
                n = len(self.steps) + len(running)
                log = open(self.control / f"writer-{n}.log", "w")
                process = subprocess.Popen(
                    [sys.executable, str(HARNESS), "writer", "--sync", str(self.sync),
                     "--hold", str(self.config.hold), "--", *command],
                    stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)
                self.processes.append(process)
                running.append((command, process, log, time.perf_counter()))
            for command, process, log, clock in running:
                code = process.wait()
                log.close()
                self.steps.append(WriterStep(stage, command, process.pid, code,
                                             time.perf_counter() - clock, [],
                                             _tail(Path(log.name))))
            stage += 1

    def _first_commit(self, process: subprocess.Popen) -> None:
        while process.poll() is None and not self.stopped and \
                not any(c.get("pid") == process.pid for c in self.snapshots.commits):
            time.sleep(POLL)

    def stop(self) -> None:
        self.stopped = True
        (self.sync / ABORT).touch()  # a writer started meanwhile stops at its first commit
        for process in self.processes:
            if process.poll() is None:
                process.kill()


def run_load(fixture: Fixture, config: LoadConfig, control: Path) -> LoadResult:
    """Run the load on ``fixture``'s atlas (``control``: a new directory for its files)."""
    from seqatlas.store import AtlasReader

    atlas = fixture.atlas.resolve()
    path = str(atlas)
    sync, snapshots, payloads = control / "sync", control / "snapshots", control / "payloads"
    for directory in (sync, snapshots, payloads):
        directory.mkdir(parents=True)
    snap = _Snapshots(atlas, sync, snapshots)
    initial = AtlasReader(atlas).version
    snap.take(initial)
    snap.commits.append({"version": initial, "operation": "initial", "pid": None})
    mixes = config.mix if isinstance(config.mix, list) else [config.mix]
    readers = []
    for number in range(config.readers):
        order = expand_mix(mixes[number % len(mixes)])
        out = control / f"reader-{number}.jsonl"
        log = open(control / f"reader-{number}.log", "w")
        readers.append((number, out, log, subprocess.Popen(
            [sys.executable, str(HARNESS), "reader", "--atlas", path, "--control", str(control),
             "--number", str(number), "--out", str(out), "--mix", ",".join(order)],
            stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)))
    problems: list[Problem] = []
    writers = None
    try:
        deadline = time.time() + config.reader_timeout
        while not all((control / f"ready-{n}").exists() for n, *_ in readers):
            dead = [n for n, _, _, p in readers if p.poll() is not None]
            if dead or time.time() > deadline:
                raise RuntimeError(f"reader {dead[0] if dead else 0} did not warm up: "
                                   f"{_tail(control / f'reader-{dead[0] if dead else 0}.log')}")
            time.sleep(0.05)
        started = time.time()
        (control / "go").touch()
        writers = _Writers(config, control, snap, started)
        writers.start()
        while writers.is_alive() or time.time() - started < config.seconds:
            snap.poll()
            time.sleep(POLL)
        snap.poll()
        (control / "stop").touch()
        deadline = time.time() + config.stop_grace
        for number, _, log, process in readers:
            try:
                process.wait(timeout=max(0.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                # its query in flight is dropped, not an answer (each answer is written
                # and flushed as one line once complete)
                process.kill()
                process.wait()
                continue
            if process.returncode:
                problems.append(Problem("reader", None, None, number,
                                        f"exited with {process.returncode}: "
                                        f"{_tail(control / f'reader-{number}.log')}"))
    finally:
        if writers is not None:
            writers.stop()
        for _, _, log, process in readers:
            if process.poll() is None:
                process.kill()
            log.close()
    steps = writers.steps
    records = [r for _, out, _, _ in readers for r in _records(out)]
    load = [r for r in records if r["phase"] == "load"]
    seconds = max((r["start"] + r["latency"] for r in load), default=started) - started
    for step in steps:
        step.commits = [c for c in snap.commits if c.get("pid") == step.pid]
        if step.returncode != 0:
            problems.append(Problem("writer", None, None, None,
                                    f"`seqatlas {' '.join(step.command)}` exited with "
                                    f"{step.returncode}:\n{step.log}"))
    final = AtlasReader(atlas)
    final_sequences = final.count("sequences")
    operations = {row["version"]: row["operation"] for row in final.history(limit=None)}
    clock = time.perf_counter()
    references = _references(atlas, snapshots, payloads, records, problems, operations)
    reference_seconds = time.perf_counter() - clock
    problems = snap.problems + problems
    for r in records:
        want = references.get((r["op"], r["version"]))
        if r["error"] is not None:
            r["verdict"] = "error"
            problems.append(Problem("error", r["op"], r["version"], r["reader"], r["error"]))
        elif want is None:
            r["verdict"] = "unchecked"  # reported once per version by _references
        elif want == r["digest"]:
            r["verdict"] = "ok"
        else:
            r["verdict"] = "inconsistent"
            problems.append(Problem(
                "inconsistent", r["op"], r["version"], r["reader"],
                f"answer {r['digest']} at version {r['version']}, reference {want}: " +
                difference(r["op"], _load(payloads, r["op"], r["digest"]),
                           _load(payloads, r["op"], want))))
    return LoadResult(config=config, seconds=seconds, records=records, writers=steps,
                      commits=snap.commits, initial_version=initial,
                      final_version=final.version, final_sequences=final_sequences,
                      versions_seen={r["version"] for r in load if r["version"] is not None},
                      problems=problems, reference_seconds=reference_seconds)


def _records(path: Path) -> list[dict]:
    """A reader's answers (a reader killed while writing one leaves a line cut short)."""
    records = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def _load(payloads: Path, op: str, key: str):
    try:
        return json.loads((payloads / f"{op}-{key}.json").read_text())
    except (OSError, ValueError):
        return None


def _references(atlas: Path, snapshots: Path, payloads: Path, records: list[dict],
                problems: list[Problem], operations: dict[int, str]) -> dict:
    """The digest of each (op, version) some reader answered, computed on a copy of the
    version's snapshot at the atlas's own path, nothing else running."""
    wanted: dict[int, set[str]] = {}
    for r in records:
        if r["error"] is None:
            wanted.setdefault(r["version"], set()).add(r["op"])
    references = {}
    live = atlas.with_name(atlas.name + ".live")
    os.rename(atlas, live)
    scratch = snapshots.parent / "reference"
    scratch.mkdir(exist_ok=True)
    try:
        for version in sorted(wanted):
            snapshot = snapshots / f"{version:08d}"
            if not snapshot.exists():
                problems.append(Problem(
                    "unreferenced", None, version, None,
                    f"readers answered at version {version}, which no writer committed "
                    f"(the log says: {operations.get(version, 'no such entry')!r}); ops: "
                    f"{', '.join(sorted(wanted[version]))}"))
                continue
            for op in sorted(wanted[version]):
                # a fresh copy for each op: a query that wrote into the atlas (a bug this
                # load is there to find) must not change the next one's reference
                shutil.copytree(snapshot, atlas)
                try:
                    got, payload = OP_FUNCTIONS[op](str(atlas), scratch)
                    if got != version:
                        raise HarnessError(f"the snapshot of version {version} reads as "
                                           f"version {got}")
                    key = references[(op, version)] = digest(payload)
                    save_payload(payloads, op, key, payload)
                except Exception:
                    problems.append(Problem("reference", op, version, None,
                                            traceback.format_exc()))
                finally:
                    shutil.rmtree(atlas)
    finally:
        os.rename(live, atlas)
    return references


# -- the figures ---------------------------------------------------------------------------

def table(result: LoadResult) -> str:
    """Per op: queries, queries per second, latency percentiles, errors, inconsistent
    answers, the versions answered from and the distinct answers given."""
    lines = [f"{'op':<10} {'count':>6} {'qps':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
             f"{'errors':>6} {'incons.':>7} {'versions':>8} {'answers':>7}"]
    for row in result.op_stats():
        lines.append(f"{row['op']:<10} {row['count']:>6} {row['qps']:>7.2f} "
                     f"{row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f} {row['p99_ms']:>8.1f} "
                     f"{row['errors']:>6} {row['inconsistent']:>7} {row['versions']:>8} "
                     f"{row['answers']:>7}")
    return "\n".join(lines)


def summary(result: LoadResult, *, problems_shown: int = 5) -> str:
    """The table, what the writers did, and the first problems of each kind."""
    lines = [f"load: {result.config.readers} readers, {result.seconds:.1f} s; versions "
             f"{result.initial_version} -> {result.final_version} "
             f"({len(result.commits) - 1} commits by the writers); readers saw "
             f"{len(result.versions_seen)} versions; {result.final_sequences} sequences "
             f"at the end; references computed in {result.reference_seconds:.1f} s", "",
             table(result), ""]
    for n, step in enumerate(result.writers):
        operations: dict[str, int] = {}
        for c in step.commits:
            operations[c["operation"]] = operations.get(c["operation"], 0) + 1
        lines.append(f"writer {n} (stage {step.stage}): seqatlas "
                     f"{' '.join(step.command[:2])} exit {step.returncode}, "
                     f"{step.seconds:.1f} s, {len(step.commits)} commits "
                     f"({', '.join(f'{k} x{v}' for k, v in operations.items())})")
    groups: dict[tuple, list[Problem]] = {}  # errors by op and message, others by kind
    for p in result.problems:
        last = re.sub(r"\d+", "N", p.message.strip().splitlines()[-1]) if p.message.strip() \
            else ""
        groups.setdefault((p.kind, p.op, last) if p.kind == "error" else (p.kind,),
                          []).append(p)
    for key, items in groups.items():
        first = items[0]
        if first.kind == "error":
            versions = sorted({p.version for p in items if p.version is not None})
            lines += ["", f"{len(items)} error(s) of {first.op} (versions answered: "
                      f"{versions or 'none'}); the first, reader {first.reader}:",
                      first.message.strip()[-3000:]]
            continue
        lines += ["", f"{len(items)} problem(s) of kind {first.kind!r}; the first:"]
        lines += [f"- op {p.op} version {p.version} reader {p.reader}: "
                  f"{p.message.strip()[-2500:]}" for p in items[:problems_shown]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="load_harness.py")
    sub = parser.add_subparsers(dest="role", required=True)
    writer = sub.add_parser("writer", help="run the seqatlas CLI, pausing after each commit")
    writer.add_argument("--sync", required=True)
    writer.add_argument("--hold", type=float, default=0.0,
                        help="seconds to wait after each commit is acknowledged")
    writer.add_argument("command", nargs=argparse.REMAINDER)
    reader = sub.add_parser("reader", help="answer queries in a loop")
    reader.add_argument("--atlas", required=True)
    reader.add_argument("--control", required=True)
    reader.add_argument("--number", type=int, default=0)
    reader.add_argument("--out", required=True)
    reader.add_argument("--mix", default=",".join(OPS))
    args = parser.parse_args(argv)
    if args.role == "writer":
        if args.command[:1] == ["--"]:
            args.command = args.command[1:]
        return writer_main(args)
    return reader_main(args)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
