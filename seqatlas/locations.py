"""Where an atlas lives when it is not a local directory: a prefix of an object store or of
another filesystem, named by URI (``s3://bucket/prefix``, ``gs://``, ``abfs://``, ``hdfs://``,
or any fsspec protocol such as ``memory://``).

``s3://`` is served by pyarrow's own S3 client, configured from the URI's query
(``?endpoint_override=host:port&scheme=http&region=...``) and the usual environment
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``), resolved once where the URI is opened, so the
filesystem object sent to a Ray worker carries them. Other schemes go through
``pyarrow.fs.FileSystem.from_uri``, then fsspec.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import parse_qs, urlsplit

from seqatlas.errors import AtlasError

_LOCAL_SCHEMES = ("", "file")
_S3_QUERY = ("endpoint_override", "scheme", "region")


def is_remote(atlas) -> bool:
    """Whether ``atlas`` names a remote location (a URI with a scheme other than file://)."""
    if isinstance(atlas, RemoteLocation):
        return True
    if isinstance(atlas, os.PathLike) or not isinstance(atlas, str):
        return False
    scheme = urlsplit(atlas).scheme
    return len(scheme) > 1 and scheme not in _LOCAL_SCHEMES  # "C:" is a drive, not a scheme


@dataclass(frozen=True)
class RemoteLocation:
    """An atlas prefix on a pyarrow filesystem: ``uri`` as given (shown in messages),
    ``root`` the path inside ``filesystem``. Picklable (sent to Ray workers)."""

    uri: str
    root: str
    filesystem: object

    def __str__(self) -> str:
        return self.uri

    def __truediv__(self, name: str) -> RemoteLocation:
        return RemoteLocation(uri=f"{self.uri.rstrip('/')}/{name}",
                              root=posixpath.join(self.root, name), filesystem=self.filesystem)

    @property
    def name(self) -> str:
        return posixpath.basename(self.root.rstrip("/"))

    def path(self, *names: str) -> str:
        return posixpath.join(self.root, *names)

    def part(self, *names: str) -> PurePosixPath:
        """The filesystem path of a file in this location (what pyarrow opens)."""
        return PurePosixPath(self.path(*names))

    def key(self) -> str:
        """A short stable digest of the location, for local caches of it."""
        return hashlib.sha256(self.uri.split("?")[0].encode()).hexdigest()[:20]

    # -- files --------------------------------------------------------------------------

    def info(self, *names: str) -> tuple[int, int] | None:
        """``(size, mtime_ns)`` of a file, or None when there is none."""
        import pyarrow.fs as pafs

        info = self.filesystem.get_file_info(self.path(*names))
        if info.type != pafs.FileType.File:
            return None
        mtime = info.mtime_ns if info.mtime_ns is not None else 0
        return int(info.size), int(mtime)

    def exists(self) -> bool:
        """Whether this location is a file."""
        return self.info() is not None

    def read_bytes(self, *names: str) -> bytes | None:
        """A file's bytes, or None when there is none."""
        try:
            with self.filesystem.open_input_stream(self.path(*names)) as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    def write_bytes(self, data: bytes, *names: str) -> None:
        """Write a file in one piece (one PUT on an object store: readers see the old or the
        new bytes, never a part)."""
        with self.filesystem.open_output_stream(self.path(*names)) as fh:
            fh.write(data)

    def sha256(self, *names: str) -> str:
        digest = hashlib.sha256()
        with self.filesystem.open_input_stream(self.path(*names)) as fh:
            while chunk := fh.read(1 << 22):
                digest.update(chunk)
        return digest.hexdigest()

    def listdir(self, *names: str) -> list[str]:
        """The names of the files directly under a directory ([] when there is none)."""
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self.path(*names), allow_not_found=True)
        return sorted(posixpath.basename(i.path) for i in self.filesystem.get_file_info(selector)
                      if i.type == pafs.FileType.File)

    def any_file(self) -> bool:
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self.root, allow_not_found=True, recursive=True)
        return any(i.type == pafs.FileType.File for i in self.filesystem.get_file_info(selector))

    def delete(self, *names: str) -> None:
        try:
            self.filesystem.delete_file(self.path(*names))
        except FileNotFoundError:
            pass

    def delete_tree(self, *names: str) -> None:
        import pyarrow.fs as pafs

        path = self.path(*names)
        if self.filesystem.get_file_info(path).type != pafs.FileType.NotFound:
            self.filesystem.delete_dir_contents(path, missing_dir_ok=True)
            try:
                self.filesystem.delete_dir(path)
            except (FileNotFoundError, OSError):
                pass  # an object store has no directory left to delete

    def move(self, source: str, target: str) -> None:
        """Rename a file (a server-side copy and a delete on an object store)."""
        self.filesystem.move(self.path(source), self.path(target))

    def open_input(self, *names: str):
        return self.filesystem.open_input_file(self.path(*names))


def remote_location(atlas) -> RemoteLocation | None:
    """The remote location ``atlas`` names, or None for a local path."""
    if isinstance(atlas, RemoteLocation):
        return atlas
    if not is_remote(atlas):
        return None
    parts = urlsplit(atlas)
    try:
        if parts.scheme == "s3":
            filesystem, root = _s3(parts), f"{parts.netloc}{parts.path}".rstrip("/")
        else:
            filesystem, root = _other(atlas)
    except (OSError, ValueError, ImportError) as exc:
        raise AtlasError(f"cannot open {atlas} ({exc}); check the URI, the credentials and "
                         "the endpoint (for S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                         "AWS_ENDPOINT_URL or ?endpoint_override=host:port)") from None
    if not root:
        raise AtlasError(f"{atlas}: name a bucket and a prefix (s3://bucket/atlas)")
    return RemoteLocation(uri=atlas, root=root, filesystem=filesystem)


def _s3(parts):
    import pyarrow.fs as pafs

    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = sorted(set(query) - set(_S3_QUERY))
    if unknown:
        raise ValueError(f"unknown query parameter(s) {', '.join(unknown)}; an s3:// atlas "
                         f"takes {', '.join(_S3_QUERY)}")
    options = {}
    endpoint = query.get("endpoint_override") or os.environ.get("AWS_ENDPOINT_URL_S3") or \
        os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        scheme, _, host = endpoint.rpartition("://")
        options["endpoint_override"] = host or endpoint
        options["scheme"] = query.get("scheme") or scheme or "https"
    elif "scheme" in query:
        options["scheme"] = query["scheme"]
    region = query.get("region") or os.environ.get("AWS_REGION") or \
        os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:  # explicit, so that the filesystem a worker receives carries them
        options.update(access_key=key, secret_key=secret,
                       session_token=os.environ.get("AWS_SESSION_TOKEN"))
    return pafs.S3FileSystem(**options)


def _other(uri: str):
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa_errors() + (ValueError,)):
        import fsspec

        filesystem, root = fsspec.core.url_to_fs(uri)
        return pafs.PyFileSystem(pafs.FSSpecHandler(filesystem)), root.rstrip("/")


def pa_errors() -> tuple[type[BaseException], ...]:
    import pyarrow as pa

    return (pa.ArrowInvalid, pa.ArrowNotImplementedError)
