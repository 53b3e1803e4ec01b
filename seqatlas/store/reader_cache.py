"""What a reader keeps about an atlas lives outside it, in the user's cache directory
(``$SEQATLAS_CACHE_DIR/atlases/<key>/``): which parts it has hashed (:mod:`.integrity`) and
derived values such as the robust statistics of a score column. Reading an atlas on a
read-only mount, owned by another user, or tracked by git-annex, DVC or a backup therefore
leaves its directory byte for byte as it was; only commands that write touch it.

The key is the atlas's identity: where it is (the resolved path with the directory's device
and inode, or the URI without its query) and when it was created, so a new atlas made at
the same place starts a new cache. Each value names the version of the atlas it was computed
from (e.g. the positions parts it read), and is used only by a reader of that version.
Files are replaced atomically (written under a temporary name, then renamed), so any number
of processes read and write them concurrently; a cache that cannot be written is simply
not kept."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

from seqatlas.locations import RemoteLocation
from seqatlas.manifest import Manifest
from seqatlas.util import cache_dir, replacing

ATLASES_DIR = "atlases"
STALE_SECONDS = 7 * 24 * 3600.0  # values of superseded versions are dropped after this


def atlas_key(root: Path | RemoteLocation, manifest: Manifest) -> str:
    """A stable digest of the atlas's identity (place and creation)."""
    if isinstance(root, RemoteLocation):
        place = root.uri.split("?")[0].rstrip("/")
    else:
        try:
            info = os.stat(root)
            place = f"{os.path.realpath(root)}\0{info.st_dev}\0{info.st_ino}"
        except OSError:
            place = os.path.realpath(root)
    return hashlib.sha256(f"{place}\0{manifest.created}".encode()).hexdigest()[:24]


def atlas_cache(root: Path | RemoteLocation, manifest: Manifest) -> Path | None:
    """This user's cache directory for the atlas (created), or None when it cannot be made
    (nothing is cached then)."""
    directory = cache_dir() / ATLASES_DIR / atlas_key(root, manifest)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return directory


def read_value(directory: Path | None, name: str):
    """The JSON value stored as ``name``, or None (absent, unreadable or cut short)."""
    if directory is None:
        return None
    try:
        return json.loads((directory / name).read_bytes())
    except (OSError, ValueError):
        return None


def write_value(directory: Path | None, name: str, value, *, superseded: str | None = None
                ) -> None:
    """Store ``value`` as ``name`` atomically; ``superseded``: a glob of the values this one
    replaces (of older versions), removed once they are :data:`STALE_SECONDS` old so that
    a reader still on an older version keeps its value meanwhile."""
    if directory is None:
        return
    path = directory / name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path, durable=False, tag=f"-{threading.get_ident()}") as tmp:
            tmp.write_bytes(json.dumps(value).encode())
    except OSError:
        return
    if superseded is None:
        return
    now = time.time()
    for old in path.parent.glob(superseded):
        try:
            if old != path and now - old.stat().st_mtime > STALE_SECONDS:
                old.unlink()
        except OSError:
            pass
