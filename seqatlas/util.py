"""Leaf helpers shared by several stages: hashing, atomic file replacement, sizes, the
machine's memory and threads, and starting Ray. Nothing here imports another seqatlas
module but ``errors``."""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from seqatlas.errors import ConfigError, InputError, SeqAtlasError

TEMP_MARK = ".tmp-"  # temporary files are ".<final name>.tmp-<pid>[-tag]"
ATLAS_MARKER = "atlas.json"  # the file that makes a directory an atlas (its manifest)
STDOUT = "-"
# Paths whose entries are handles on something else (a terminal, a pipe, another process's
# descriptor): written in place, never replaced.
_HANDLE_DIRS = ("/dev/", "/proc/")


def cache_dir() -> Path:
    """Where seqatlas keeps its per-user cache."""
    override = os.environ.get("SEQATLAS_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "seqatlas"


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
def replacing(path: str | os.PathLike, *, durable: bool = True, tag: str = "") -> Iterator[Path]:
    """Write ``path`` atomically: yield a temporary sibling to write, then (only if the
    block succeeds) fsync it, rename it over ``path`` and fsync the directory. On any error
    the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    tmp = temporary_name(path, tag)
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


def _resolve_output(path: Path) -> tuple[Path, bool]:
    """``(target, in_place)``: the file an output at ``path`` lands in, following symlinks one
    link at a time, and whether it must be written in place (a device, FIFO, socket, or a
    link through /dev or /proc, such as /dev/stdout) rather than atomically replaced."""
    current = Path(os.path.abspath(path))
    for _ in range(40):
        if str(current).startswith(_HANDLE_DIRS):
            return current, True
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            return current, False
        if stat.S_ISLNK(info.st_mode):
            link = Path(os.readlink(current))
            current = Path(os.path.abspath(current.parent / link))
            continue
        if stat.S_ISDIR(info.st_mode):
            raise ConfigError(f"--output {path} is a directory; give a file name")
        return current, not stat.S_ISREG(info.st_mode)
    raise ConfigError(f"--output {path}: too many levels of symbolic links")


def _descriptor(path: Path) -> int | None:
    """The open file descriptor of this process that ``path`` names (/dev/stdout,
    /dev/fd/N, /proc/self/fd/N), if it names one."""
    text = str(path)
    named = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}
    if text in named:
        return named[text]
    for prefix in ("/dev/fd/", "/proc/self/fd/", f"/proc/{os.getpid()}/fd/"):
        if text.startswith(prefix) and text[len(prefix):].isdigit():
            return int(text[len(prefix):])
    return None


def enclosing_atlas(path: str | os.PathLike) -> Path | None:
    """The atlas directory that ``path`` (resolved) lies in or is, if any."""
    current = Path(os.path.realpath(path))
    for directory in (current, *current.parents):
        if (directory / ATLAS_MARKER).is_file():
            return directory
    return None


def check_output(path: str | os.PathLike) -> tuple[Path | None, bool]:
    """Refuse an ``--output`` that cannot or must not be written (a directory, a missing
    directory, a path inside an atlas) before any work; returns ``(target, in_place)`` as
    :func:`output_file` will write it (target None: standard output)."""
    if str(path) == STDOUT:
        return None, True
    target, in_place = _resolve_output(Path(path))
    atlas = enclosing_atlas(target if target.exists() else target.parent)
    if atlas is not None:
        raise ConfigError(f"--output {path} is inside the atlas {atlas}; an output must not "
                          "overwrite an atlas's files: write it elsewhere")
    if not in_place and not target.parent.is_dir():
        raise ConfigError(f"--output {path}: directory {target.parent} does not exist")
    return target, in_place


@contextmanager
def output_file(path: str | os.PathLike) -> Iterator[Path]:
    """The one writer behind every ``--output``: yields a temporary path to write the whole
    output to; when the block succeeds the output lands at ``path``.

    ``-`` is standard output. A regular file (or a new one) is replaced atomically, a
    symlink's target rather than the link; a device, FIFO or a handle under /dev or /proc
    (``/dev/stdout``) is written in place and keeps its type. A path inside an atlas
    directory is refused, so an output never overwrites an atlas's parts or manifest. On
    error nothing is left behind and the destination is untouched.
    """
    target, in_place = check_output(path)
    if not in_place:
        with replacing(target, durable=False) as tmp:
            yield tmp
        return
    scratch = Path(tempfile.mkdtemp(prefix="seqatlas-output-"))
    try:
        tmp = scratch / (target.name if target is not None else "stdout")
        yield tmp
        descriptor = 1 if target is None else _descriptor(target)
        with open(tmp, "rb") as source:
            if descriptor is not None:  # this process's own stream: write where it points
                sys.stdout.flush()
                with os.fdopen(descriptor, "wb", closefd=False) as sink:
                    shutil.copyfileobj(source, sink)
            else:
                with open(target, "wb") as sink:
                    shutil.copyfileobj(source, sink)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


STDIN = "-"


def stream_name(path: str | os.PathLike) -> str:
    """How an input is named to the user: ``<stdin>`` for ``-``, else its path."""
    name = os.fspath(path)
    return "<stdin>" if name == STDIN else name


def is_stream(path: str | os.PathLike) -> bool:
    """``-`` (stdin) or a path that exists and is neither a regular file nor a directory:
    a pipe, ``/dev/stdin``, a process substitution ``<(...)`` (read once, no seeking)."""
    name = os.fspath(path)
    if name == STDIN:
        return True
    try:
        mode = os.stat(name).st_mode
    except OSError:
        return False  # missing or unreadable: the reader reports it, naming the path
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


class Spool:
    """Inputs as regular files: each stream copied once into a temporary directory, since
    readers go over an input several times (kind, validation, hashing, scoring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.paths: list[Path] = []
        self.names: dict[str, str] = {}  # temporary copy -> the name the user gave

    def add(self, path: str | os.PathLike, what: str) -> Path:
        if not is_stream(path):
            self.paths.append(Path(path))
            return self.paths[-1]
        name = stream_name(path)
        if name in self.names.values():
            raise ConfigError(f"{name} is given twice; a stream can be read only once")
        if name == "<stdin>" and sys.stdin is not None and sys.stdin.isatty():
            raise ConfigError(f"{what} '-' reads stdin, which is a terminal: pipe the file "
                              "in (e.g. `zcat x.gz | seqatlas ...  -`) or give its path")
        copy = self.directory / f"input-{len(self.paths)}"
        try:
            source = sys.stdin.buffer if name == "<stdin>" else open(path, "rb")
        except OSError as exc:
            raise ConfigError(f"{name}: cannot open ({exc.strerror or exc})") from None
        with source, open(copy, "wb") as sink:
            shutil.copyfileobj(source, sink, 1 << 20)
        self.names[str(copy)] = name
        self.paths.append(copy)
        return copy

    def name_of(self, path: str | os.PathLike) -> str:
        """The user's name of an input (``<stdin>``, ``/dev/fd/63``) or its path."""
        return self.names.get(os.fspath(path), os.fspath(path))


@contextmanager
def spooled_inputs(paths: list, *, what: str = "input") -> Iterator[Spool]:
    """The inputs ``paths`` as regular files (:class:`Spool`; ``-`` is stdin); the copies of
    streams go to a temporary directory (``TMPDIR``), removed on exit. An error raised inside
    that names a copy names the stream instead."""
    with tempfile.TemporaryDirectory(prefix="seqatlas-input-") as directory:
        spool = Spool(Path(directory))
        for path in paths:
            spool.add(path, what)
        try:
            yield spool
        except SeqAtlasError as exc:
            message = str(exc)
            for copy, name in spool.names.items():
                message = message.replace(copy, name)
            if message == str(exc):
                raise
            raise type(exc)(message) from None  # the error classes take only a message


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

    if address and "@" in address.split("//", 1)[-1].split("/", 1)[0]:
        raise error("--address carries user info (user:password@), which would be shown and "
                    "recorded: give Ray's address without it and credentials through the "
                    "environment")
    if ray.is_initialized():
        return ray, False
    if address not in (None, "local") and not address.startswith("ray://"):
        _check_reachable(address, error=error, fallback=fallback)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    try:
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR, configure_logging=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise error(f"cannot start or reach Ray at {address or 'local'} ({exc}); check "
                    f"--address, or {fallback}") from None
    return ray, True


def _check_reachable(address: str, *, error: type[SeqAtlasError], fallback: str) -> None:
    """Fail at once, with the address, when the Ray that ``address`` names (``auto``: the
    last ``ray start`` on this machine, or ``RAY_ADDRESS``) does not answer; Ray itself
    would retry for a minute or more and end in its own GCS log."""
    import socket

    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:  # another Ray layout: let ray.init report
        return
    try:
        target = canonicalize_bootstrap_address(address)
    except (ConnectionError, ValueError) as exc:
        raise error(f"no Ray cluster found for --address {address} ({exc}); start one with "
                    f"`ray start --head`, or {fallback}") from None
    if target is None:
        return
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        where = address if address == target else f"{address} ({target})"
        raise error(f"Ray at {where} does not answer ({getattr(exc, 'strerror', None) or exc}): "
                    "the cluster is down or its session is stale (`ray status` tells; "
                    f"`ray stop` clears a stale one); start it with `ray start --head`, or "
                    f"{fallback}") from None


CHROM_STYLES = ("as-is", "ucsc", "ensembl")
_MITOCHONDRION = {"ucsc": "chrM", "ensembl": "MT"}
MITOCHONDRION_ALIASES = ("chrM", "chrMT", "MT", "M")


def chrom_name(name: str, style: str) -> str:
    """``name`` as UCSC (``chrX``, ``chrM``) or Ensembl (``X``, ``MT``) writes it.

    ucsc adds ``chr`` to a name without it, ensembl strips it; the mitochondrion (``chrM``,
    ``chrMT``, ``MT``, ``M``) becomes ``chrM`` or ``MT``; ``as-is`` keeps ``name``. The one
    mapping behind ``annotate --names auto`` and ``export --chrom-names``.
    """
    if style not in CHROM_STYLES:
        raise ConfigError(f"--chrom-names must be one of {', '.join(CHROM_STYLES)}, not "
                          f"{style!r}")
    if style == "as-is":
        return name
    if name in MITOCHONDRION_ALIASES:
        return _MITOCHONDRION[style]
    if style == "ucsc":
        return name if name.startswith("chr") else "chr" + name
    return name.removeprefix("chr")


_COORDINATES = re.compile(r"([0-9][0-9,_]*)-([0-9][0-9,_]*)")
_REGION_EXAMPLE = "e.g. chr1:1000-2000, 0-based and half-open"


def parse_region(text: str, known: set[str] = frozenset()) -> tuple[str, int | None, int | None]:
    """``(seq_id, start, end)`` of ``SEQ:START-END`` (commas and underscores in numbers are
    ignored); ``(seq_id, None, None)`` when ``text`` is one of the ``known`` sequence ids.
    The last colon separates the coordinates, so sequence ids may hold colons."""
    if not isinstance(text, str) or not text:
        raise InputError(f"region {text!r} is not SEQ:START-END ({_REGION_EXAMPLE})")
    if text in known:
        return text, None, None
    seq_id, colon, span = text.rpartition(":")
    match = _COORDINATES.fullmatch(span.strip()) if colon else None
    if not seq_id or match is None:
        raise InputError(f"region {text!r} is not SEQ:START-END ({_REGION_EXAMPLE}); give the "
                         "start and end as whole numbers after the last colon")
    start, end = (int(g.replace(",", "").replace("_", "")) for g in match.groups())
    return seq_id, start, end


def region_span(text: str, lengths: dict[str, int], *, atlas="the atlas"
                ) -> tuple[str, int, int]:
    """``(seq_id, start, end)`` (0-based, half-open) of the region ``text`` names, checked
    against the sequences' ``lengths`` (a whole sequence when ``text`` is its id): an
    InputError names the region and the valid range when the sequence is unknown, the
    region empty or out of range."""
    seq_id, start, end = parse_region(text, set(lengths))
    if seq_id not in lengths:
        shown = ", ".join(f"{s}:0-{n}" for s, n in list(lengths.items())[:5])
        more = f" and {len(lengths) - 5} more" if len(lengths) > 5 else ""
        holds = f"its sequences are {shown}{more}" if lengths else "it holds no sequences"
        raise InputError(f"region {text!r}: {atlas} has no sequence {seq_id!r}; {holds}")
    length = lengths[seq_id]
    valid = f"the valid range is {seq_id}:0-{length} (0-based, half-open)"
    if start is None:
        start, end = 0, length
    if start >= end:
        raise InputError(f"region {text!r} is empty: START must be below END; {valid}")
    if end > length:
        raise InputError(f"region {text!r} ends past the end of {seq_id} ({length:,} "
                         f"positions): {valid}")
    return seq_id, start, end
