"""Integrity of committed parts: each part's size and SHA-256 are recorded at commit, and
Parquet page checksums are written and verified on read. Every read of a table first checks
its parts: a missing or resized part, or one whose bytes no longer hash to the recorded
value, is refused by name. Hashing every part on every read would cost a full read, so a
part is re-hashed only when its file identity (size, mtime, ctime, inode, device) differs
from the one it had when last hashed (an append-only log in the user's cache, see
:mod:`.reader_cache`; never in the atlas, which readers do not write): any write to a file
changes its ctime. ``seqatlas verify`` re-hashes everything regardless."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from seqatlas import schema
from seqatlas.locations import RemoteLocation
from seqatlas.manifest import Manifest, PartRecord
from seqatlas.store.reader_cache import atlas_cache
from seqatlas.util import atomic_write, file_sha256

VERIFIED_LOG = ".verified"  # where earlier versions kept the log, in the atlas: writers remove it
VERIFIED_CACHE = "verified.log"


@dataclass(frozen=True)
class PartDamage:
    """A committed part that is not as it was committed."""

    table: str
    name: str
    unit: str
    problem: str
    units: tuple[str, ...] = ()  # every unit whose rows the part holds (several if compacted)

    def __str__(self) -> str:
        return f"{self.table}/{self.name}: {self.problem}"


def file_identity(info: os.stat_result) -> list[int]:
    return [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev]


class VerifiedLog:
    """Parts hashed since they last changed: ``table/name`` -> (file identity, SHA-256)."""

    def __init__(self, root: Path | RemoteLocation, manifest: Manifest):
        directory = atlas_cache(root, manifest)
        self.path = directory / VERIFIED_CACHE if directory is not None else None
        self.entries: dict[str, tuple[list[int], str]] = {}
        self.lines = 0
        if self.path is None:
            return
        try:
            with open(self.path, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except (OSError, UnicodeDecodeError):
            return
        self.lines = len(lines)
        try:  # one parse of the whole log (a parse per line is ~10x slower)
            rows = json.loads("[" + ",".join(line for line in lines if line) + "]")
        except ValueError:  # a line cut short by a crash: parse line by line
            rows = []
            for line in lines:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue
        for row in rows:
            try:
                key, identity, digest = row
            except (ValueError, TypeError):
                continue
            self.entries[key] = (identity, digest)

    def trusted(self, key: str, identity: list[int], digest: str) -> bool:
        return self.entries.get(key) == (identity, digest)

    def record(self, key: str, identity: list[int], digest: str) -> None:
        self.entries[key] = (identity, digest)
        if self.path is None:
            return
        line = (json.dumps([key, identity, digest]) + "\n").encode()
        try:  # one write of one short line with O_APPEND: processes appending never interleave
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
            self.lines += 1
        except OSError:
            pass  # no cache: the part is hashed again next time

    def compact(self, keep: set[str]) -> None:
        """Rewrite the log with one line per part still committed (writers only: a reader
        of an older version would drop the newer parts' lines)."""
        if self.path is None or self.lines <= 2 * len(self.entries) + 1000:
            return
        self.entries = {k: v for k, v in self.entries.items() if k in keep}
        text = "".join(json.dumps([k, i, d]) + "\n" for k, (i, d) in self.entries.items())
        try:
            atomic_write(self.path, text.encode())
            self.lines = len(self.entries)
        except OSError:
            pass


def damage_message(path: Path, damage: list[PartDamage]) -> str:
    shown = "; ".join(map(str, damage[:5])) + (f"; and {len(damage) - 5} more"
                                                if len(damage) > 5 else "")
    return (f"{path}: {len(damage)} committed part(s) damaged ({shown}). `seqatlas verify "
            f"--atlas {path}` lists everything; `seqatlas repair --atlas {path}` (or re-running "
            "the ingest) rewrites them from the inputs.")


def check_parts(root: Path, manifest: Manifest, verified: VerifiedLog,
                tables: list[str] | None = None, *, full: bool = False,
                names: set[str] | None = None) -> list[PartDamage]:
    """The committed parts of ``tables`` (default: all; ``names``: only those parts) that
    are not as committed."""
    damage = []
    for table in tables or schema.TABLES:
        for name, record in sorted(manifest.table_parts(table).items()):
            if names is not None and name not in names:
                continue
            problem = _part_problem(root, verified, table, name, record, full=full)
            if problem:
                damage.append(PartDamage(table, name, record.unit, problem,
                                          tuple(record.covered_units())))
    return damage


def _part_problem(root: Path | RemoteLocation, verified: VerifiedLog, table: str, name: str,
                  record: PartRecord, *, full: bool) -> str | None:
    if isinstance(root, RemoteLocation):
        return _remote_part_problem(root, verified, table, name, record, full=full)
    path = root / table / name
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_size != record.bytes:
        return (f"{info.st_size:,} bytes on disk, {record.bytes:,} when committed "
                "(truncated or rewritten)")
    return _digest_problem(verified, f"{table}/{name}", file_identity(info), record, full=full,
                           digest=lambda: file_sha256(path))


def _remote_part_problem(root: RemoteLocation, verified: VerifiedLog, table: str, name: str,
                         record: PartRecord, *, full: bool) -> str | None:
    try:
        info = root.info(table, name)
    except OSError as exc:
        return f"unreadable ({exc})"
    if info is None:
        return "missing"
    if info[0] != record.bytes:
        return (f"{info[0]:,} bytes in the store, {record.bytes:,} when committed "
                "(truncated or rewritten)")
    return _digest_problem(verified, f"{table}/{name}", list(info), record, full=full,
                           digest=lambda: root.sha256(table, name))


def _digest_problem(verified: VerifiedLog, key: str, identity, record: PartRecord, *,
                    full: bool, digest: Callable[[], str]) -> str | None:
    """The part's SHA-256 against its record, unless ``verified`` trusts its identity."""
    if record.sha256 is None:
        return None  # committed before checksums: its size is all there is to check
    if not full and verified.trusted(key, identity, record.sha256):
        return None
    try:
        value = digest()
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if value != record.sha256:
        return "its bytes changed since it was committed (SHA-256 differs)"
    verified.record(key, identity, value)
    return None


