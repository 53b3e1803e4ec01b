"""A reader process for tests/test_snapshots.py: one line of JSON in, one out.

``{"op": "open"}`` opens the atlas (a new :class:`seqatlas.Atlas`) and answers its version;
``{"op": "answer"}`` answers the queries below on the atlas it opened last, however many
commits ago: the version, then for each query its result (rounded) or the class of the
error it raised. ``{"op": "quit"}`` ends."""

from __future__ import annotations

import json
import sys


def answers(atlas) -> dict:
    """What a reader of ``atlas`` sees, query by query."""
    results = {}
    for name, query in QUERIES.items():
        try:
            results[name] = query(atlas)
        except Exception as exc:  # noqa: BLE001 -- the class is the answer
            results[name] = {"error": type(exc).__name__, "message": str(exc)[:300]}
    return results


def _positions(atlas) -> dict:
    row = atlas.sql("SELECT count(*) AS n, sum(logp) AS s, count(DISTINCT seq_id) AS seqs "
                    "FROM positions").to_pylist()[0]
    committed = sum(p.rows for p in atlas.manifest.table_parts("positions").values())
    return {"rows": row["n"], "committed_rows": committed, "seqs": row["seqs"],
            "sum": round(row["s"] or 0.0, 3)}


def _anomalies(atlas) -> list:
    table = atlas.anomalies(z=1.5)
    return sorted([r["seq_id"], r["start"], r["end"]] for r in table.to_pylist())


def _knn(atlas) -> list:
    if not atlas.manifest.indexes:
        return []
    table = atlas.knn(at="p0:8", k=4)
    return sorted([r["token_id"], r["seq_id"], r["start"], round(float(r["distance"]), 4)]
                  for r in table.to_pylist())


def _tables(atlas) -> dict:
    return {table: atlas.count(table) for table in ("sequences", "positions", "tokens")}


QUERIES = {"positions": _positions, "anomalies": _anomalies, "knn": _knn, "tables": _tables}


def main(path: str) -> None:
    import seqatlas

    atlas = None
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "quit":
            return
        if request["op"] == "open":
            atlas = seqatlas.Atlas(path)
            reply = {"version": atlas.version}
        else:
            reply = {"version": atlas.version, "answers": answers(atlas)}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
