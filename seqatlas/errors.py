"""One exception tree for every user-facing failure.

Every class takes a single message so instances pickle cleanly across Ray workers.
The CLI catches :class:`SeqAtlasError` once and prints ``Error: <message>``.
"""

from __future__ import annotations


class SeqAtlasError(Exception):
    """Base class: a problem the user can fix; the message says how."""


class ConfigError(SeqAtlasError):
    """Invalid or contradictory options."""


class InputError(SeqAtlasError):
    """An input file cannot be used."""


class FastaError(InputError):
    """Malformed FASTA: the message names the file, the record and the line."""


class ModelError(SeqAtlasError):
    """A model cannot be found, loaded or used with this input."""


class AtlasError(SeqAtlasError):
    """The atlas directory is missing, corrupt or locked."""


class AtlasDamagedError(AtlasError):
    """Committed parts are missing or no longer what was committed."""


class AtlasBusyError(AtlasError):
    """Another process holds the atlas's writer lock."""


class AtlasMismatchError(AtlasError):
    """The atlas was built with another model or other scoring parameters."""


class ToolError(SeqAtlasError):
    """An external program (tantan, TRF) is missing or failed."""


class IngestError(SeqAtlasError):
    """Some work units failed after all retries; everything else was committed."""


class QueryError(SeqAtlasError):
    """A query was refused by the sandbox, failed, or ran past its time limit."""


class AtlasIndexError(SeqAtlasError):
    """An embedding index is missing, corrupt, stale, or was built from another atlas."""


def describe_error(error: BaseException) -> str:
    """``error`` in one line for a failure report: its type and the last line of its message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}"
