"""Where an atlas lives when it is not a local directory: a prefix of an object store or of
another filesystem, named by URI (``s3://bucket/prefix``, ``gs://``, ``abfs://``, ``hdfs://``,
or any fsspec protocol such as ``memory://``).

``s3://`` is served by pyarrow's own S3 client, configured from the URI's query
(``?endpoint_override=host:port&scheme=http&region=...``) and the usual environment
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``), resolved once where the URI is opened, so the
filesystem object sent to a Ray worker carries them. Other schemes go through
``pyarrow.fs.FileSystem.from_uri``, then fsspec.

Credentials never go in a URI (they would be shown in messages, logs and the run record): a
URI with user info (``user:password@``, also percent-encoded, also in a query value such as
``?endpoint_override=``) or a credential query parameter is refused; :func:`redacted` is how
such a URI is shown.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import parse_qs, parse_qsl, unquote, urlsplit

from seqatlas.errors import AtlasError

_LOCAL_SCHEMES = ("", "file")
_S3_QUERY = ("endpoint_override", "scheme", "region")
_USERINFO = re.compile(r"^((?:[A-Za-z][A-Za-z0-9+.-]*:)?//)?[^?#]*(?:@|%40)", re.IGNORECASE)
_QUERY_ITEM = re.compile(r"([?&;])([^=&;#]*)=([^&;#]*)")
_CREDENTIAL_NAME = re.compile(r"key|secret|token|passw|signature|^sig$", re.IGNORECASE)
_NAMED_USER_SCHEMES = ("abfs", "abfss", "az")
_SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID",
                     "AWS_SECURITY_TOKEN", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN",
                     "GOOGLE_OAUTH_ACCESS_TOKEN")
_ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
_USE_THE_ENVIRONMENT = ("credentials never go in a URI: pass them through the environment "
                        "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN for "
                        "s3://) or the store's usual credential chain (a profile, an instance "
                        "role, GOOGLE_APPLICATION_CREDENTIALS)")


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


def _has_userinfo(text: str) -> bool:
    """Whether a URI or an authority (``host:port``) carries ``user[:password]@``; a secret
    with a ``/`` in it (AWS secret keys have them) ends the authority early, so an ``@`` in
    the path after an authority with a ``:`` counts too. On Azure (``abfs://``) the part
    before ``@`` names a container or an account: only a password there counts."""
    try:
        parts = urlsplit(text if "//" in text else f"//{text}")
    except ValueError:
        return "@" in unquote(text)
    netloc, path = unquote(parts.netloc), unquote(parts.path)
    if ":" in netloc and "@" in path:
        return True
    if parts.scheme.lower() in _NAMED_USER_SCHEMES:
        return ":" in netloc.rpartition("@")[0]
    return "@" in netloc


def redacted(uri: str) -> str:
    """``uri`` as it may be shown: user info as ``***@``, credential query values as ``***``."""
    uri = str(uri)

    def item(match: re.Match) -> str:
        separator, name, value = match.groups()
        if _CREDENTIAL_NAME.search(unquote(name)):
            value = "***"
        elif _has_userinfo(unquote(value)):
            value = _USERINFO.sub(lambda m: f"{m.group(1) or ''}***@", value, count=1)
        return f"{separator}{name}={value}"

    head, mark, query = uri.partition("?")
    if _has_userinfo(head):
        head = _USERINFO.sub(lambda m: f"{m.group(1) or ''}***@", head, count=1)
    return head + (_QUERY_ITEM.sub(item, mark + query) if mark else "")


def scrubbed(text: str) -> str:
    """``text`` (a message from a storage library) without the values of the environment's
    credential variables."""
    for variable in _SECRET_VARIABLES:
        value = os.environ.get(variable)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def refuse_credentials(uri: str) -> None:
    """Raise :class:`AtlasError` when ``uri`` carries credentials (user info, also in a query
    value, or a credential query parameter); the message shows it redacted."""
    head, _, query = str(uri).partition("?")
    problem = None
    if _has_userinfo(head):
        problem = "carries user info (user:password@)"
    for name, value in parse_qsl(query.partition("#")[0], keep_blank_values=True):
        if problem is not None:
            break
        if _CREDENTIAL_NAME.search(name):
            problem = f"carries a credential in its query ({name}=)"
        elif _has_userinfo(value):
            problem = f"carries user info (user:password@) in its query ({name}=)"
    if problem is not None:
        raise AtlasError(f"{redacted(uri)} {problem}; {_USE_THE_ENVIRONMENT}")


def remote_location(atlas) -> RemoteLocation | None:
    """The remote location ``atlas`` names, or None for a local path. A URI with credentials
    in it is refused (:func:`refuse_credentials`)."""
    if isinstance(atlas, RemoteLocation):
        return atlas
    if not is_remote(atlas):
        return None
    refuse_credentials(atlas)
    parts = urlsplit(atlas)
    try:
        if parts.scheme == "s3":
            filesystem, root = _s3(parts), f"{parts.netloc}{parts.path}".rstrip("/")
        else:
            filesystem, root = _other(atlas)
    except (OSError, ValueError, ImportError) as exc:
        raise AtlasError(f"cannot open {atlas} ({scrubbed(str(exc))}); check the URI, the "
                         "credentials and the endpoint (for S3: AWS_ACCESS_KEY_ID, "
                         "AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL or "
                         "?endpoint_override=host:port)") from None
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
    for variable in _ENDPOINT_VARIABLES:
        if _has_userinfo(os.environ.get(variable) or ""):
            raise AtlasError(f"{variable} carries user info (user:password@); "
                             f"{_USE_THE_ENVIRONMENT}")
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
