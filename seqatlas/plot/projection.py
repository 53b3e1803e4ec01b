"""The pooled embeddings of an atlas projected onto their first two principal components,
each point coloured by a SQL expression, and the scatter drawn from them.

Rows: the ``pooled`` table's vectors of one ``layer`` and ``pooling`` (default: the first
layer the manifest's ``pooling`` records, and ``mean`` when stored), read through the
sandbox (:class:`seqatlas.query.sandbox.Sandbox`), so nothing can write. ``color`` and
``where`` are SQL over the view ``pooled_points``, one row per pooled vector of that layer
and pooling: the pooled columns (``pool_id``, ``seq_id``, ``start``, ``end``, ``level``,
``pooling``, ``layer``, ``tokens``), the sequence's (``ordinal``, ``length``,
``description``, ``source``, ``sha1``, ``global_start``, ``token_offset``), and
``repeat_class``: the repeat class whose repeats cover the most bases of the row's interval
(bases of overlap summed over the class's repeats; ties to the first class by name; the
in-context copies ``annotate --detect`` adds are not repeats here; null when no repeat
overlaps), with ``repeat_fraction``, those bases over the interval's length. Each is checked
as ``query knn --where`` is (:func:`seqatlas.query.neighbours.check_predicate`) and the
statements around them are checked by the sandbox as user SQL.

PCA: the vectors as float64, centred on their mean, ``X = U S V^T`` (numpy SVD; with more
rows than dimensions, of ``X^T X``, whose singular values are ``S^2`` and right vectors
``V``); the coordinates are ``X V[:, :2]`` and a component's explained variance is
``S_i^2 / sum S^2``. Each component's sign makes its largest-magnitude loading positive.
More than ``max_vectors`` rows passing ``where`` are thinned to every ``stride``-th by
``pool_id`` (the title says so). A colour of a numeric SQL type gets a colour bar; any
other (text, boolean, ...) is a category: the ``max_categories`` most frequent by name, the
rest as ``other``; null values are drawn grey as ``null``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from seqatlas import schema
from seqatlas.errors import ConfigError, QueryError
from seqatlas.plot.tables import reader_of
from seqatlas.query.neighbours import check_predicate
from seqatlas.query.sandbox import Sandbox, sql_string
from seqatlas.store import AtlasReader

MIN_VECTORS = 3
COORDINATE_COLUMNS = ("pool_id", "seq_id", "start", "end", "level", "pc1", "pc2")
VIEW_COLUMNS = ("pool_id", "seq_id", "start", "end", "level", "pooling", "layer", "tokens",
                "ordinal", "length", "description", "source", "sha1", "global_start",
                "token_offset", "repeat_class", "repeat_fraction")
OTHER, NULL = "other", "null"
_NULL_COLOUR, _OTHER_COLOUR = "#c8c8c8", "#7f7f7f"


@dataclass
class ProjectionConfig:
    """Which pooled vectors to project and how to colour them."""

    layer: int | None = None  # None: the first layer the atlas pooled
    pooling: str | None = None  # mean | bos; None: mean when stored, else the first stored
    color: str | None = None  # SQL expression over pooled_points; None: one colour
    where: str | None = None  # SQL condition over pooled_points
    max_vectors: int = 50_000  # more rows are thinned to every n-th by pool_id

    def validate(self) -> None:
        if self.layer is not None and (isinstance(self.layer, bool)
                                       or not isinstance(self.layer, int)):
            raise ConfigError(f"--layer must be a whole number, not {self.layer!r}")
        if self.pooling is not None and self.pooling not in schema.POOLINGS:
            raise ConfigError(f"--pooling {self.pooling!r} is not one of "
                              f"{', '.join(schema.POOLINGS)}")
        if isinstance(self.max_vectors, bool) or not isinstance(self.max_vectors, int) or \
                self.max_vectors < MIN_VECTORS:
            raise ConfigError(f"max_vectors must be a whole number, {MIN_VECTORS} or more, not "
                              f"{self.max_vectors!r}")
        for option, text in (("--color", self.color), ("--where", self.where)):
            if text is not None:
                check_fragment(option, text)


@dataclass
class Projection:
    """The projected vectors: ``table`` has :data:`COORDINATE_COLUMNS` (and ``color``, the
    SQL expression's value, when one was given), in pool_id order."""

    table: pa.Table
    explained: tuple[float, float]  # fraction of the total variance per component
    layer: int
    pooling: str
    bin: int  # bases per bin; 0: one vector per sequence
    matched: int  # rows passing where (before thinning)
    stride: int  # every stride-th row by pool_id was kept
    dimensions: int
    color: str | None
    where: str | None
    atlas: str

    @property
    def numeric(self) -> bool:
        """Whether the colour is a number (a colour bar) rather than a category."""
        if "color" not in self.table.column_names:
            return False
        kind = self.table.schema.field("color").type
        return pa.types.is_integer(kind) or pa.types.is_floating(kind) or \
            pa.types.is_decimal(kind)


def check_fragment(option: str, text: str) -> None:
    """Refuse an SQL fragment that is not one self-contained expression, as ``--where`` of
    ``query knn`` is refused; the message names ``option``."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{option} is empty; give an SQL expression over pooled_points, "
                          f"e.g. {option} \"seq_id = 'chr1'\" (columns: "
                          f"{', '.join(VIEW_COLUMNS)})")
    try:
        check_predicate(text)
    except QueryError as exc:
        raise QueryError(str(exc).replace("--where", option)) from None


def principal_components(vectors: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """(n, 2) coordinates on the first two principal components of ``vectors`` (n, d) and
    the fraction of the variance each explains; see the module docstring. A component the
    data do not have (d = 1, or all rows equal) is all zeros and explains 0."""
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or len(x) < 1:
        raise ConfigError(f"PCA needs a non-empty (rows, dimensions) array, not shape {x.shape}")
    centred = x - x.mean(axis=0)
    if len(centred) > centred.shape[1]:
        _, squares, vt = np.linalg.svd(centred.T @ centred)
    else:
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        squares = singular ** 2
    vt = vt[:2]
    top = np.abs(vt).argmax(axis=1)
    signs = np.where(vt[np.arange(len(vt)), top] < 0, -1.0, 1.0)
    coords = np.zeros((len(x), 2))
    coords[:, : len(vt)] = centred @ (vt * signs[:, None]).T
    total = float(squares.sum())
    explained = [float(s) / total if total > 0 else 0.0 for s in squares[:2]]
    explained += [0.0] * (2 - len(explained))
    return coords, (explained[0], explained[1])


def _view_sql(reader: AtlasReader, layer: int, pooling: str) -> str:
    """The pooled_points view (see the module docstring) of one layer and pooling."""
    chosen = (f"SELECT p.*, s.* EXCLUDE (seq_id), s.global_start + p.start AS _gstart, "
              f's.global_start + p."end" AS _gend FROM pooled p JOIN sequences s USING (seq_id) '
              f"WHERE p.layer = {int(layer)} AND p.pooling = {sql_string(pooling)} "
              "AND p.vector IS NOT NULL")
    columns = ", ".join(f'c."{name}"' for name in VIEW_COLUMNS[:-2])
    if not reader.count("repeats"):
        return (f"WITH c AS ({chosen}) SELECT {columns}, NULL::VARCHAR AS repeat_class, "
                "NULL::DOUBLE AS repeat_fraction, c.vector FROM c")
    # global coordinates: the interval join is pure inequalities (a range join)
    return f"""
        WITH c AS ({chosen}),
        covered AS (
            SELECT c.pool_id, r.class,
                   sum(least(r.gend, c._gend) - greatest(r.gstart, c._gstart)) AS bases
            FROM c JOIN repeats_global r ON r.gstart < c._gend AND r.gend > c._gstart
            WHERE r.class IS NOT NULL
              AND r.source IS DISTINCT FROM {sql_string(schema.COPY_REPEAT_SOURCE)}
            GROUP BY ALL),
        top AS (
            SELECT pool_id, first(class ORDER BY bases DESC, class) AS repeat_class,
                   max(bases) AS bases
            FROM covered GROUP BY pool_id)
        SELECT {columns}, t.repeat_class,
               (t.bases / greatest(c."end" - c.start, 1))::DOUBLE AS repeat_fraction, c.vector
        FROM c LEFT JOIN top t USING (pool_id)"""


def _choose(reader: AtlasReader, config: ProjectionConfig) -> tuple[int, str, int]:
    """(layer, pooling, bin) to project; a ConfigError saying the fix when the atlas has no
    pooled rows or not the ones asked for."""
    settings = reader.manifest.pooling
    if not settings or not reader.count("pooled"):
        raise ConfigError(f"{reader.path} has no pooled embeddings: make them with `seqatlas "
                          f"pool --atlas {reader.path}` (from the stored token embeddings), "
                          "then plot again")
    if "vector" not in reader.manifest.pooled_schema().names:
        raise ConfigError(f"{reader.path} stores no embeddings, so its pooled rows have no "
                          "vectors: ingest with --embeddings float16 into a new atlas and pool")
    layers = [int(layer) for layer in settings.get("layers") or []]
    poolings = [str(p) for p in settings.get("poolings") or []]
    layer = layers[0] if config.layer is None and layers else config.layer
    if layer not in layers:
        raise ConfigError(f"layer {layer} is not pooled in {reader.path} (pooled layers: "
                          f"{', '.join(map(str, layers)) or 'none'}); give --layer one of "
                          "them")
    pooling = config.pooling or ("mean" if "mean" in poolings or not poolings else poolings[0])
    if pooling not in poolings:
        raise ConfigError(f"pooling {pooling!r} is not stored in {reader.path} (stored: "
                          f"{', '.join(poolings) or 'none'}); give --pooling one of them")
    return layer, pooling, int(settings.get("bin") or 0)


def _run(sandbox: Sandbox, statement: str, what: str) -> pa.Table:
    try:
        return sandbox.run(statement)
    except QueryError as exc:
        raise QueryError(f"{what} cannot be evaluated over the pooled rows ({exc}); write "
                         f"SQL over the columns of pooled_points: {', '.join(VIEW_COLUMNS)}") \
            from None


def _matrix(column: pa.ChunkedArray | pa.Array, rows: int) -> np.ndarray:
    """A column of equal-length float lists as a (rows, dimensions) float64 array."""
    values = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    flat = values.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float64).reshape(rows, -1)


def pooled_projection(atlas, config: ProjectionConfig | None = None,
                      **options) -> Projection:
    """The pooled vectors of ``atlas`` (a path or an AtlasReader) chosen by ``config`` (or
    ``options``, its fields) on their first two principal components, with the colour
    expression's value per row; see the module docstring."""
    config = config or ProjectionConfig(**options)
    config.validate()
    reader = reader_of(atlas)
    layer, pooling, bin_size = _choose(reader, config)
    where = f"WHERE (\n{config.where}\n)" if config.where is not None else ""
    with Sandbox(reader) as sandbox:
        sandbox.execute_internal(
            f"CREATE TEMP VIEW pooled_points AS {_view_sql(reader, layer, pooling)}")
        matched = _run(sandbox, f"SELECT count(*) AS n FROM pooled_points {where}",
                       f"--where {config.where!r}")["n"][0].as_py()
        if matched < MIN_VECTORS:
            filtered = f" pass --where {config.where!r}" if config.where is not None else ""
            raise ConfigError(f"{matched} pooled vector{'s' if matched != 1 else ''} of layer "
                              f"{layer}, {pooling} pooling{filtered} in {reader.path}; PCA "
                              f"needs at least {MIN_VECTORS}: "
                              + ("loosen --where" if filtered else
                                 "pool more sequences, or bins (`seqatlas pool --bin`)"))
        colour = ""
        if config.color is not None:
            _run(sandbox, f"SELECT (\n{config.color}\n) AS color FROM pooled_points LIMIT 0",
                 f"--color {config.color!r}")
            colour = f", (\n{config.color}\n) AS color"
        stride = math.ceil(matched / config.max_vectors)
        thin = (f"QUALIFY (row_number() OVER (ORDER BY pool_id) - 1) % {stride} = 0"
                if stride > 1 else "")
        rows = _run(sandbox, f'SELECT pool_id, seq_id, start, "end", level, vector{colour} '
                    f"FROM pooled_points {where} {thin} ORDER BY pool_id",
                    " and ".join(f"{o} {t!r}" for o, t in (("--color", config.color),
                                                            ("--where", config.where))
                                 if t is not None) or "the pooled rows")
    vectors = _matrix(rows["vector"], rows.num_rows)
    coords, explained = principal_components(vectors)
    table = rows.select(list(COORDINATE_COLUMNS[:5]))
    table = table.append_column("pc1", pa.array(coords[:, 0])).append_column(
        "pc2", pa.array(coords[:, 1]))
    if config.color is not None:
        table = table.append_column("color", rows["color"])
    return Projection(table=table, explained=explained, layer=layer, pooling=pooling,
                      bin=bin_size, matched=matched, stride=stride,
                      dimensions=vectors.shape[1], color=config.color, where=config.where,
                      atlas=str(reader.path))


def check_max_categories(max_categories) -> None:
    """Refuse a legend size that is not a whole number from 1 to 20 (the palette's size)."""
    if isinstance(max_categories, bool) or not isinstance(max_categories, int) or \
            not 1 <= max_categories <= 20:
        raise ConfigError(f"--max-categories must be a whole number from 1 to 20, not "
                          f"{max_categories!r}")


def categories(values: list, max_categories: int) -> tuple[list[str], list[str]]:
    """Per value its drawn category (its text; ``other`` beyond the ``max_categories`` most
    frequent, ties by name; ``null`` for None), and the categories in legend order."""
    labels = [None if v is None else str(v) for v in values]
    counts: dict[str, int] = {}
    for label in labels:
        if label is not None:
            counts[label] = counts.get(label, 0) + 1
    ranked = sorted(counts, key=lambda c: (-counts[c], c))
    kept = set(ranked[:max_categories])
    drawn = [NULL if label is None else label if label in kept else OTHER for label in labels]
    order = ranked[:max_categories] + [c for c in (OTHER, NULL) if c in drawn]
    return drawn, order


def _title(projection: Projection) -> str:
    n = projection.table.num_rows
    unit = "sequence" if projection.bin == 0 else f"{projection.bin:,}-base bin"
    head = (f"PCA of {n:,} pooled vectors ({projection.pooling} pooling, layer "
            f"{projection.layer}, one per {unit}, {projection.dimensions} dimensions) of "
            f"{projection.atlas}")
    notes = []
    if projection.stride > 1:
        notes.append(f"1 in {projection.stride} of the {projection.matched:,} vectors "
                     "(by pool_id)")
    if projection.where is not None:
        notes.append(f"where {projection.where}")
    if projection.color is not None:
        notes.append(f"coloured by {projection.color}")
    return head + ("\n" + "; ".join(notes) if notes else "")


def draw_projection(figure, projection: Projection, *, max_categories: int = 10) -> None:
    """The scatter of pc1 against pc2 (axes label ``embedding``): one colour (``points``),
    a colour bar over a numeric colour (``points``; nulls ``null``), or one scatter per
    category (``category:NAME``, with ``other`` and ``null``) and a legend."""
    check_max_categories(max_categories)
    ax = figure.add_subplot()
    ax.set_label("embedding")
    table = projection.table
    x, y = (table[c].to_numpy(zero_copy_only=False) for c in ("pc1", "pc2"))
    size = float(np.clip(20000 / max(len(x), 1), 2, 30))
    if projection.color is None:
        ax.scatter(x, y, s=size, color="tab:blue", alpha=0.8, linewidths=0, gid="points")
    elif projection.numeric:
        values = np.asarray(table["color"].to_numpy(zero_copy_only=False), dtype=np.float64)
        known = np.isfinite(values)
        if (~known).any():
            ax.scatter(x[~known], y[~known], s=size, color=_NULL_COLOUR, linewidths=0,
                       gid=NULL, label=f"{NULL} ({int((~known).sum()):,})")
            ax.legend(loc="best", fontsize="small")
        if known.any():
            points = ax.scatter(x[known], y[known], c=values[known], s=size, cmap="viridis",
                                alpha=0.85, linewidths=0, gid="points")
            figure.colorbar(points, ax=ax, label=projection.color)
    else:
        drawn, order = categories(table["color"].to_pylist(), max_categories)
        labels = np.array(drawn, dtype=object)
        palette = _palette(len([c for c in order if c not in (OTHER, NULL)]))
        handles = {}
        for i, name in reversed(list(enumerate(order))):  # null and other underneath
            mine = labels == name
            colour = _NULL_COLOUR if name == NULL else _OTHER_COLOUR if name == OTHER \
                else palette[i]
            handles[name] = ax.scatter(x[mine], y[mine], s=size, color=colour, alpha=0.85,
                                       linewidths=0, gid=f"category:{name}",
                                       label=f"{name} ({int(mine.sum()):,})")
        ax.legend(handles=[handles[name] for name in order], loc="center left",
                  bbox_to_anchor=(1.01, 0.5), fontsize="small",
                  title=projection.color if len(projection.color) <= 40 else None,
                  frameon=False)
    for axis, explained, setter in ((1, projection.explained[0], ax.set_xlabel),
                                    (2, projection.explained[1], ax.set_ylabel)):
        setter(f"PC{axis} ({100 * explained:.1f}% of variance)")
    figure.suptitle(_title(projection), fontsize="medium")


def _palette(n: int) -> list:
    from matplotlib import colormaps

    colours = colormaps["tab10" if n <= 10 else "tab20"].colors
    return [colours[i % len(colours)] for i in range(n)]
