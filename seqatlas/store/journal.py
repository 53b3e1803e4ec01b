"""The commit log: how an atlas's state is written and read (the design of Delta Lake's and
Iceberg's logs, for one writer at a time).

Files (names relative to the atlas)::

    atlas.json                  the base: the whole state (the manifest) at log version B,
                                ``{"log": {"version": B}, ...}``; rewritten only by a fold
    _log/<V>.json               commit V: one entry of actions (parts added or removed,
                                units, inputs, settings, run records), created only if absent
    _log/segments/<A>-<C>.json  entries A..C copied into one file (every SEGMENT_EVERY commits;
                                FANOUT segments of one span are merged into one)

A commit writes one entry, whose creation is the atomic step (:meth:`Backend.create`):
its size depends on the unit committed, never on the atlas. Opening reads the base, the
chain of segments after it and the short tail of entries after them (at most
SEGMENT_EVERY - 1); so opening reads O(log) files and the state, and a commit O(1) bytes
(plus, amortised, each entry copied once per segment level). A writer folds the state into
``atlas.json`` when the tail has grown large against the base, and always when the base is
small, so that small atlases keep a complete ``atlas.json``.

An interrupted commit is invisible: an entry exists whole or not at all, and parts named by
no entry are removed by the next writer. An atlas written before the log (``atlas.json``
without ``log``) reads as it always did and is upgraded by its next write (or ``seqatlas
upgrade``): one atomic replace of ``atlas.json``, after clearing any ``_log`` left over.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from seqatlas.errors import AtlasError
from seqatlas.manifest import InputRecord, Manifest, PartRecord
from seqatlas.store.backend import Backend
from seqatlas.util import ATLAS_MARKER, utc_now

MANIFEST = ATLAS_MARKER
LOG_DIR = "_log"
SEGMENTS_DIR = f"{LOG_DIR}/segments"
SEGMENT_EVERY = 100  # entries copied into one first-level segment
FANOUT = 10  # segments of one span merged into one of the next
FOLD_SMALL_BYTES = 4 << 20  # a base below this is folded at every writer's close
FOLD_TAIL_SHARE = 0.25  # else folded when the tail's bytes reach this share of the base
RUNS_KEPT = 100  # run records kept in the state (the most recent)
_ENTRY = re.compile(r"^(\d{20})\.json$")
_SEGMENT = re.compile(r"^(\d{20})-(\d{20})\.json$")


def entry_name(version: int) -> str:
    return f"{LOG_DIR}/{version:020d}.json"


def segment_name(first: int, last: int) -> str:
    return f"{SEGMENTS_DIR}/{first:020d}-{last:020d}.json"


def apply(manifest: Manifest, actions: list[dict], time: str) -> None:
    """Apply one entry's ``actions`` (committed at ``time``) to ``manifest``, in place."""
    for action in actions:
        (kind, value), = action.items()
        if kind == "add":
            record = {k: v for k, v in value.items() if k not in ("table", "name")}
            manifest.parts.setdefault(value["table"], {})[value["name"]] = \
                PartRecord.from_json(record)
            key = f"{value['table']}/{value['name']}"
            if manifest.retired and key in manifest.retired:  # written again under its name
                manifest.retired = {k: v for k, v in manifest.retired.items() if k != key} \
                    or None
        elif kind == "remove":
            if manifest.parts.get(value["table"], {}).pop(value["name"], None) is not None:
                manifest.retired = {**(manifest.retired or {}),
                                    f"{value['table']}/{value['name']}": time}
        elif kind == "unit":
            manifest.units[value["key"]] = value["record"]
        elif kind == "drop_unit":
            manifest.units.pop(value, None)
        elif kind == "input":
            manifest.inputs.append(InputRecord.from_json(value))
        elif kind == "set":
            _set(manifest, value["field"], value.get("path", []), value["value"])
        elif kind == "run":
            manifest.runs = ((manifest.runs or []) + [value])[-RUNS_KEPT:]
        elif kind == "unretire":
            retired = {k: v for k, v in (manifest.retired or {}).items() if k not in value}
            manifest.retired = retired or None
        else:
            raise TypeError(f"unknown action {kind!r}")
    manifest.updated = time


def _set(manifest: Manifest, name: str, path: list[str], value) -> None:
    """Set ``manifest.<name>`` (cache, indexes, warnings, kind, pooling) at ``path``; a None
    value at a path removes the key."""
    if name not in ("cache", "indexes", "warnings", "kind", "pooling"):
        raise TypeError(f"cannot set {name!r}")
    if not path:
        setattr(manifest, name, value)
        return
    node = getattr(manifest, name)
    if node is None:
        node = {}
        setattr(manifest, name, node)
    for key in path[:-1]:
        node = node.setdefault(key, {})
    if value is None:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value


def _entry_actions(raw: bytes, where: str) -> tuple[list[dict], str]:
    try:
        data = json.loads(raw)
        return data["actions"], data["time"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise AtlasError(f"{where} is corrupt ({exc}); restore it from a backup, or re-ingest "
                         "into a new --atlas directory") from None


def _replay(manifest: Manifest, entries: list, where: str) -> None:
    try:
        for actions, time in entries:
            apply(manifest, actions, time)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise AtlasError(f"{where} holds an action this seqatlas cannot apply ({exc}); use "
                         "the seqatlas version that wrote it, or restore the atlas") from None


@dataclass
class LogState:
    """Where a writer stands in the log after reading it."""

    base_bytes: int = 0
    segments: list[tuple[int, int]] = field(default_factory=list)  # live, after the base
    tail: list[dict] = field(default_factory=list)  # entries after the last segment
    tail_bytes: int = 0  # bytes of segments and entries after the base


def load_base(backend: Backend) -> tuple[dict, bytes] | None:
    """``atlas.json`` as JSON and bytes; None when there is none."""
    raw = backend.read(MANIFEST)
    if raw is None:
        return None
    try:
        return json.loads(raw), raw
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AtlasError(f"{backend.path}/{MANIFEST} is corrupt ({exc}); restore it or "
                         "re-ingest") from None


def read_log(backend: Backend, manifest: Manifest, base_bytes: int) -> LogState:
    """Bring ``manifest`` (the base) up to the log's last version, in place. A segment that
    vanished under a concurrent merge or fold is read as the entries it copied (entries are
    never removed), so a reader never waits for, nor fails under, a writer."""
    state = LogState(base_bytes=base_bytes)
    version = manifest.log_version
    if version is None:
        return state
    spans = sorted((int(m[1]), int(m[2])) for name in backend.listdir(SEGMENTS_DIR)
                   if (m := _SEGMENT.match(name)))
    while True:
        following = [s for s in spans if s[0] == version + 1]
        if not following:
            break
        first, last = max(following, key=lambda s: s[1])
        where = f"{backend.path}/{segment_name(first, last)}"
        raw = backend.read(segment_name(first, last))
        if raw is None:  # merged or folded meanwhile: the entries it copied are all kept
            break
        try:
            entries = [(e["actions"], e["time"]) for e in json.loads(raw)["entries"]]
        except (ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise AtlasError(f"{where} is corrupt ({exc}); delete it (the entries it copies "
                             f"are in {backend.path}/{LOG_DIR}) and open the atlas again") \
                from None
        _replay(manifest, entries, where)
        state.segments.append((first, last))
        state.tail_bytes += len(raw)
        version = last
    while True:
        raw = backend.read(entry_name(version + 1))
        if raw is None:
            break
        where = f"{backend.path}/{entry_name(version + 1)}"
        actions, time = _entry_actions(raw, where)
        _replay(manifest, [(actions, time)], where)
        state.tail.append(json.loads(raw))
        state.tail_bytes += len(raw)
        version += 1
    manifest.log_version = version
    return state


class Journal:
    """A writer's end of the log: commits entries, writes and merges segments, folds."""

    def __init__(self, backend: Backend, state: LogState):
        self.backend = backend
        self.state = state
        self.bytes_written = 0  # by this journal (entries, segments, folds), for benchmarks
        self.entry_bytes = 0  # of which entries

    def commit(self, manifest: Manifest, actions: list[dict], operation: str) -> int:
        """Write ``actions`` as the next entry, then apply them to ``manifest``; both or
        neither. Returns the new version."""
        version = manifest.log_version + 1
        entry = {"version": version, "time": utc_now(), "operation": operation,
                 "actions": actions}
        data = json.dumps(entry, separators=(",", ":"), sort_keys=True).encode()
        if not self.backend.create(entry_name(version), data):
            raise AtlasError(
                f"{self.backend.path}: version {version} of the atlas was committed by another "
                "process while this one held the lock (a stale lock taken over?); nothing of "
                "this change was written. Re-run to resume.")
        self.bytes_written += len(data)
        self.entry_bytes += len(data)
        apply(manifest, actions, entry["time"])
        manifest.log_version = version
        self.state.tail.append(entry)
        self.state.tail_bytes += len(data)
        if len(self.state.tail) >= SEGMENT_EVERY:
            self._write_segment()
        return version

    def _write_segment(self) -> None:
        tail = self.state.tail
        first, last = tail[0]["version"], tail[-1]["version"]
        data = json.dumps({"entries": tail}, separators=(",", ":"), sort_keys=True).encode()
        self.backend.replace(segment_name(first, last), data)
        self.bytes_written += len(data)
        self.state.segments.append((first, last))
        self.state.tail = []
        self._merge_segments()

    def _merge_segments(self) -> None:
        """Merge the last FANOUT segments into one while they have the same span."""
        segments = self.state.segments
        while len(segments) >= FANOUT:
            group = segments[-FANOUT:]
            spans = {last - first for first, last in group}
            if len(spans) != 1:
                return
            entries = []
            for first, last in group:
                raw = self.backend.read(segment_name(first, last))
                if raw is None:
                    return  # removed by hand: keep reading the entries it copied
                entries += json.loads(raw)["entries"]
            first, last = group[0][0], group[-1][1]
            data = json.dumps({"entries": entries}, separators=(",", ":"),
                              sort_keys=True).encode()
            self.backend.replace(segment_name(first, last), data)
            self.bytes_written += len(data)
            del segments[-FANOUT:]
            segments.append((first, last))
            for span in group:
                self.backend.delete(segment_name(*span))

    def fold_due(self) -> bool:
        """Whether the tail is worth folding into the base (see the module's docstring)."""
        if self.state.tail_bytes == 0:
            return False
        return self.state.base_bytes < FOLD_SMALL_BYTES or \
            self.state.tail_bytes >= FOLD_TAIL_SHARE * self.state.base_bytes

    def fold(self, manifest: Manifest) -> None:
        """Write the state as the new base, then remove the segments it folded."""
        data = manifest.dumps()
        self.backend.replace(MANIFEST, data)
        self.bytes_written += len(data)
        for span in self.state.segments:
            self.backend.delete(segment_name(*span))
        self.state = LogState(base_bytes=len(data))


def history(backend: Backend, *, limit: int | None = 20) -> list[dict]:
    """The atlas's commits, newest first (``limit`` of them): version, time, operation, and
    what each added or removed."""
    versions = sorted((int(m[1]) for name in backend.listdir(LOG_DIR)
                       if (m := _ENTRY.match(name))), reverse=True)
    rows = []
    for version in versions[:limit] if limit else versions:
        raw = backend.read(entry_name(version))
        if raw is None:
            continue
        data = json.loads(raw)
        actions = data.get("actions", [])
        counts: dict[str, int] = {}
        rows_added = 0
        for action in actions:
            (kind, value), = action.items()
            counts[kind] = counts.get(kind, 0) + 1
            if kind == "add":
                rows_added += value.get("rows", 0)
        rows.append({"version": version, "time": data.get("time"),
                     "operation": data.get("operation"),
                     "parts_added": counts.get("add", 0),
                     "parts_removed": counts.get("remove", 0),
                     "units": counts.get("unit", 0) - counts.get("drop_unit", 0),
                     "rows_added": rows_added, "bytes": len(raw)})
    return rows
