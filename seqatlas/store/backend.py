"""Where an atlas's files live: a local directory or an object-store prefix, behind one small
interface (read, replace, create-if-absent, list, delete, lock) that the commit protocol of
:mod:`seqatlas.store.journal` is written against once.

Create-if-absent is the commit's atomic step. In a directory it is ``link(2)`` of a fully
written, fsynced temporary file to the entry's name, which fails if the name exists, so two
writers can never both create version N, and a reader sees the whole entry or none. On an
object store it is a PUT made while holding the atlas's lock object (a writer checks the
name is free first, and reads the lock back after taking it: see
:meth:`ObjectBackend.lock`); pyarrow's S3 client offers no conditional PUT, so that lock
protocol is what keeps a second writer out, and the journal refuses a version it finds taken.
"""

from __future__ import annotations

import fcntl
from abc import ABC, abstractmethod
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from seqatlas.errors import AtlasBusyError
from seqatlas.locations import RemoteLocation
from seqatlas.store.parts import storage_error
from seqatlas.util import atomic_write, fsync_dir, temporary_name

LOCK = ".lock"
LOCK_STALE_SECONDS = 300.0  # a remote lock object not refreshed for this long is abandoned
LOCK_REFRESH_SECONDS = 30.0  # how often a remote writer refreshes its lock object


class Backend(ABC):
    """The files of one atlas; names are ``/``-separated and relative to its root."""

    path: Path | RemoteLocation

    @abstractmethod
    def read(self, name: str) -> bytes | None:
        """A file's bytes, or None when there is none."""

    @abstractmethod
    def replace(self, name: str, data: bytes) -> None:
        """Write a file in one piece: readers see the old or the new bytes."""

    @abstractmethod
    def create(self, name: str, data: bytes) -> bool:
        """Write a file that must not exist yet; False (nothing written) if it does."""

    @abstractmethod
    def listdir(self, directory: str) -> list[str]:
        """The names of the files directly under ``directory`` ([] when there is none)."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Remove a file (nothing if there is none)."""

    @abstractmethod
    def lock(self) -> None:
        """Become the atlas's only writer, or raise :class:`AtlasError` naming the holder."""

    @abstractmethod
    def unlock(self) -> None:
        """Stop being the atlas's writer (a no-op when not locked)."""


class LocalBackend(Backend):
    """An atlas directory; the writer's lock is ``flock`` on ``.lock``."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = None

    def read(self, name: str) -> bytes | None:
        try:
            return (self.path / name).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def replace(self, name: str, data: bytes) -> None:
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, data)

    def create(self, name: str, data: bytes) -> bool:
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_name(target, f"-{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, target)
            except FileExistsError:
                return False
            fsync_dir(target.parent)
            return True
        finally:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass

    def listdir(self, directory: str) -> list[str]:
        try:
            return sorted(p.name for p in (self.path / directory).iterdir() if p.is_file())
        except (FileNotFoundError, NotADirectoryError):
            return []

    def delete(self, name: str) -> None:
        try:
            (self.path / name).unlink()
        except FileNotFoundError:
            pass

    def lock(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            handle = open(self.path / LOCK, "a")
        except OSError as exc:
            raise storage_error(exc, self.path, "write the atlas") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise AtlasBusyError(f"{self.path} is being written by another seqatlas process; "
                             "wait for it to finish") from None
        self._lock = handle

    def unlock(self) -> None:
        if self._lock is not None and not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
        self._lock = None


def _lock_record(raw: bytes | None) -> dict | None:
    try:
        record = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _dead_here(held: dict) -> bool:
    """Whether a lock record names a process of this machine that no longer runs."""
    if held.get("host") != socket.gethostname() or not isinstance(held.get("pid"), int):
        return False
    try:
        os.kill(held["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


class ObjectBackend(Backend):
    """An atlas prefix on an object store (or any pyarrow filesystem): one PUT per file, and
    a lock object refreshed by a thread while the writer is open."""

    def __init__(self, location: RemoteLocation):
        self.path = location
        self._owner: dict | None = None
        self._heartbeat: threading.Event | None = None

    def read(self, name: str) -> bytes | None:
        return self.path.read_bytes(name)

    def replace(self, name: str, data: bytes) -> None:
        self.path.write_bytes(data, name)

    def create(self, name: str, data: bytes) -> bool:
        if self.path.info(name) is not None:
            return False
        self.path.write_bytes(data, name)
        return True

    def listdir(self, directory: str) -> list[str]:
        return self.path.listdir(directory)

    def delete(self, name: str) -> None:
        self.path.delete(name)

    def lock(self) -> None:
        """Take the lock object: refused while another writer's lock is fresher than
        :data:`LOCK_STALE_SECONDS`; two writers that both found none each read the object
        back after writing it, and the one whose write was overwritten backs off."""
        location, now = self.path, time.time()
        try:
            held = _lock_record(location.read_bytes(LOCK))
            if held and now - held.get("refreshed", 0) < LOCK_STALE_SECONDS and \
                    not _dead_here(held):
                raise AtlasBusyError(
                    f"{location} is being written by another seqatlas process (host "
                    f"{held.get('host')}, pid {held.get('pid')}, lock refreshed "
                    f"{now - held.get('refreshed', 0):.0f} s ago); wait for it to finish. If "
                    f"no such process runs any more, delete {location}/{LOCK}.")
            owner = {"owner": uuid.uuid4().hex, "host": socket.gethostname(),
                     "pid": os.getpid(), "refreshed": now}
            location.write_bytes(json.dumps(owner).encode(), LOCK)
            time.sleep(0.2)  # let a racing writer's PUT land before we read back
            back = _lock_record(location.read_bytes(LOCK))
        except OSError as exc:
            raise storage_error(exc, location, "open the atlas") from None
        if not back or back.get("owner") != owner["owner"]:
            raise AtlasBusyError(f"{location} is being written by another seqatlas process "
                             "(it took the lock as this one did); wait for it to finish")
        self._owner = owner
        self._heartbeat = threading.Event()
        threading.Thread(target=self._keep_lock, args=(self._heartbeat,), daemon=True,
                         name="seqatlas-lock").start()

    def _keep_lock(self, stop: threading.Event) -> None:
        """Refresh the lock object while this writer is open (a unit can take longer than
        the lock's staleness)."""
        while not stop.wait(LOCK_REFRESH_SECONDS):
            owner = self._owner
            if owner:
                try:
                    self.path.write_bytes(
                        json.dumps({**owner, "refreshed": time.time()}).encode(), LOCK)
                except OSError:
                    pass  # tried again at the next beat

    def unlock(self) -> None:
        owner = self._owner
        if self._heartbeat is not None:
            self._heartbeat.set()
        self._owner, self._heartbeat = None, None
        if not owner:
            return
        try:
            held = _lock_record(self.path.read_bytes(LOCK))
            if held and held.get("owner") == owner["owner"]:
                self.path.delete(LOCK)
        except OSError:
            pass  # the lock goes stale on its own


def backend_for(path: Path | RemoteLocation) -> Backend:
    """The backend of an atlas at ``path``."""
    return ObjectBackend(path) if isinstance(path, RemoteLocation) else LocalBackend(path)
