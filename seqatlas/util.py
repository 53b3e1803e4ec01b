"""Leaf helpers shared by several stages: hashing, atomic file replacement, sizes, the
machine's memory and threads, and starting Ray. Nothing here imports another seqatlas
module but ``errors``."""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from seqatlas.errors import SeqAtlasError

TEMP_MARK = ".tmp-"  # temporary files are ".<final name>.tmp-<pid>[-tag]"


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_name(path: Path, tag: str = "") -> Path:
    """The hidden temporary sibling of ``path`` used while it is being written."""
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}{tag}")


@contextmanager
def replacing(path: str | os.PathLike, *, durable: bool = True) -> Iterator[Path]:
    """Write ``path`` atomically: yield a temporary sibling to write, then (only if the
    block succeeds) fsync it, rename it over ``path`` and fsync the directory. On any error
    the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def format_size(n: float) -> str:
    """Bytes as a human-readable size: ``512 B``, ``1.5 KiB``, ... ``2.0 TiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"


def machine_memory_bytes() -> int:
    """Physical memory, or the cgroup limit when it is smaller."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total


def machine_threads() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def start_ray(address: str | None, *, error: type[SeqAtlasError], fallback: str):
    """Ray, initialised quietly (``address`` None: a fresh local instance, never one found
    on this machine); returns ``(ray, started)`` where ``started`` says this call started
    it (so the caller shuts it down). A failure raises ``error`` ending with ``fallback``."""
    import ray

    if ray.is_initialized():
        return ray, False
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    try:
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR, configure_logging=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise error(f"cannot start or reach Ray at {address or 'local'} ({exc}); check "
                    f"--address, or {fallback}") from None
    return ray, True
