"""What resolving a checkpoint learns from its files, remembered between runs.

Resolving a model hashes its weights (the atlas keys its parts on that hash), which for a
large checkpoint means reading every byte on each ingest, and reads its config through
transformers (whose import alone takes seconds). :func:`weights_sha256` keeps the digest,
and :func:`remembered_facts` the facts drawn from the config, in small JSON files under the
user cache directory. Weights are keyed by each file's absolute path, size, mtime_ns and
inode: a file rewritten in place, replaced, resized or touched has another key and is hashed
again. Config facts are keyed by the config's own bytes (a few KB, hashed every time) and
the installed transformers version, so an edit to the config is never missed.

The cache directory is ``$SEQATLAS_CACHE_DIR``, else ``$XDG_CACHE_HOME/seqatlas``, else
``~/.cache/seqatlas``. The file is replaced atomically; a corrupt, unreadable or unwritable
cache is ignored (the weights are hashed, nothing fails).
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Callable

from seqatlas.util import cache_dir, replacing

CACHE_FILE = "weights_sha256.json"
FACTS_CACHE_FILE = "checkpoint_facts.json"
CACHE_VERSION = 1
MAX_ENTRIES = 256  # the most recently stored are kept


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


def _is_digest(value) -> bool:
    return isinstance(value, str) and len(value) == 64


def _load(path: Path, valid: Callable[[object], bool] = _is_digest) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    entries = data.get("entries") if isinstance(data, dict) and \
        data.get("version") == CACHE_VERSION else None
    if not isinstance(entries, dict):
        return {}
    return {k: v for k, v in entries.items() if isinstance(k, str) and valid(v)}


def _store(path: Path, entries: dict) -> None:
    kept = dict(list(entries.items())[-MAX_ENTRIES:])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path, durable=False) as tmp:
            tmp.write_text(json.dumps({"version": CACHE_VERSION, "entries": kept}),
                           encoding="utf-8")
    except OSError:
        pass  # a read-only home or a full disk: the next run hashes again


def remembered(file_name: str, key: str, compute: Callable[[], object],
               valid: Callable[[object], bool]):
    """``compute()``, kept under ``key`` in the cache file ``file_name`` of the user's cache
    directory (safe under concurrent processes: each write replaces the file whole)."""
    path = cache_dir() / file_name
    entries = _load(path, valid)
    if key in entries:
        return entries[key]
    value = compute()
    # re-read: another process may have stored other checkpoints meanwhile
    entries = _load(path, valid)
    entries.pop(key, None)
    entries[key] = value
    _store(path, entries)
    return value


def weights_sha256(paths: list[Path]) -> str:
    """:func:`hash_files` of ``paths``, from the cache when the files are unchanged."""
    try:
        key = _key(paths)
    except OSError:
        return hash_files(paths)  # let hashing report the missing file
    return remembered(CACHE_FILE, key, lambda: hash_files(paths), _is_digest)


def _installed_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def remembered_facts(config_file: Path, compute: Callable[[], dict], *,
                     fields: frozenset[str]) -> dict:
    """``compute()``: facts drawn from a checkpoint's ``config_file`` (a dict of JSON values
    with exactly the keys ``fields``), from the cache when the file and the installed
    transformers are unchanged. What ``compute`` raises is not remembered: a refused
    checkpoint is read again next time."""
    try:
        config_sha256 = hashlib.sha256(Path(config_file).read_bytes()).hexdigest()
        key = json.dumps([config_sha256, _installed_version("transformers")],
                         separators=(",", ":"))
    except OSError:
        return compute()  # let reading the config report the problem
    return remembered(FACTS_CACHE_FILE, key, compute,
                       lambda v: isinstance(v, dict) and set(v) == fields)
