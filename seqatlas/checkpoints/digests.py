"""The SHA-256 of a checkpoint's weight files, remembered between runs.

Resolving a model hashes its weights (the atlas keys its parts on that hash), which for a
large checkpoint means reading every byte on each ingest. :func:`weights_sha256` keeps the
digest in a small JSON file under the user cache directory, keyed by each file's absolute
path, size, mtime_ns and inode: a file rewritten in place, replaced, resized or touched has
another key and is hashed again.

The cache directory is ``$SEQATLAS_CACHE_DIR``, else ``$XDG_CACHE_HOME/seqatlas``, else
``~/.cache/seqatlas``. The file is replaced atomically; a corrupt, unreadable or unwritable
cache is ignored (the weights are hashed, nothing fails).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from seqatlas.util import replacing

CACHE_FILE = "weights_sha256.json"
CACHE_VERSION = 1
MAX_ENTRIES = 256  # the most recently stored are kept


def cache_dir() -> Path:
    """Where seqatlas keeps its per-user cache."""
    override = os.environ.get("SEQATLAS_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "seqatlas"


def hash_files(paths: list[Path]) -> str:
    """SHA-256 of the files' bytes, read one after another in 4 MiB chunks."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def _key(paths: list[Path]) -> str:
    """The files' identities: what must be unchanged for a stored digest to hold."""
    identity = []
    for path in paths:
        absolute = os.path.abspath(path)
        info = os.stat(absolute)
        identity.append([absolute, info.st_size, info.st_mtime_ns, info.st_ino])
    return json.dumps(identity, separators=(",", ":"))


def _load(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    entries = data.get("entries") if isinstance(data, dict) and \
        data.get("version") == CACHE_VERSION else None
    if not isinstance(entries, dict):
        return {}
    return {k: v for k, v in entries.items() if isinstance(k, str) and isinstance(v, str)
            and len(v) == 64}


def _store(path: Path, entries: dict[str, str]) -> None:
    kept = dict(list(entries.items())[-MAX_ENTRIES:])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path, durable=False) as tmp:
            tmp.write_text(json.dumps({"version": CACHE_VERSION, "entries": kept}),
                           encoding="utf-8")
    except OSError:
        pass  # a read-only home or a full disk: the next run hashes again


def weights_sha256(paths: list[Path]) -> str:
    """:func:`hash_files` of ``paths``, from the cache when the files are unchanged."""
    try:
        key = _key(paths)
    except OSError:
        return hash_files(paths)  # let hashing report the missing file
    path = cache_dir() / CACHE_FILE
    entries = _load(path)
    if key in entries:
        return entries[key]
    digest = hash_files(paths)
    # re-read: another process may have stored other checkpoints meanwhile
    entries = _load(path)
    entries.pop(key, None)
    entries[key] = digest
    _store(path, entries)
    return digest
