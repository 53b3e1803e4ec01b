"""What each command does to an atlas, said in its help: only the commands marked
``writes`` open an atlas for writing; the ``reads`` commands leave every file of the atlas
byte for byte as it was (they work on a read-only mount or another user's atlas, and keep
what they derive in ``$SEQATLAS_CACHE_DIR``); ``none`` commands take no atlas."""

from __future__ import annotations

WRITES = "writes"
READS = "reads"
NO_ATLAS = "none"

ATLAS_ACCESS: dict[str, str] = {
    "ingest": WRITES, "repair": WRITES, "compact": WRITES, "upgrade": WRITES, "pool": WRITES,
    "annotate": WRITES, "index build": WRITES, "index update": WRITES, "probe icl": WRITES,
    "demo": WRITES, "variants score": WRITES,
    "info": READS, "verify": READS, "log": READS, "report": READS, "index list": READS,
    "query sql": READS, "query anomalies": READS, "query enrichment": READS,
    "query knn": READS, "query similar": READS, "query identity": READS,
    "export bedgraph": READS, "export bigwig": READS, "export bed": READS,
    "plot track": READS, "plot enrichment": READS, "plot distribution": READS,
    "plot identity": READS, "plot icl": READS, "plot calibration": READS,
    "plot mutagenesis": READS, "plot embedding": READS, "variants scan": READS,
    "models": NO_ATLAS, "probe doubling": NO_ATLAS,
}

# what a writing command writes, where it is not the whole atlas it names
_WRITES_DETAIL = {
    "demo": "Writes the atlases it makes (under --atlas), nothing else.",
    "variants score": "Writes into the atlas only with --store; otherwise reads only.",
    "index build": "Writes into the atlas: builds from the version it opens without the "
                   "lock (ingests and readers go on), then takes the lock to record the "
                   "index, waiting for a running writer to finish.",
}

NOTES = {
    WRITES: "Writes into the atlas (takes its lock; readers meanwhile see the version "
            "before or after each commit).",
    READS: "Reads only: leaves every file of the atlas as it was (works on a read-only "
           "mount; caches go to $SEQATLAS_CACHE_DIR).",
    NO_ATLAS: "Takes no atlas.",
}


def access_note(command: str) -> str:
    """The sentence a command's help ends with, saying what it does to the atlas."""
    return _WRITES_DETAIL.get(command) or NOTES[ATLAS_ACCESS[command]]
