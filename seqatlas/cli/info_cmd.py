"""``seqatlas info`` and the printing of summaries."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from seqatlas.cli.options import ATLAS, NO_PROGRESS, PROGRESS, Progress, json_option
from seqatlas.cli.tables import FittedTable
from seqatlas.util import format_size


def info(
    atlas: Optional[str] = typer.Argument(None, help="Atlas directory, or a URI.",
                                          show_default=False),
    atlas_flag: Optional[str] = typer.Option(None, "--atlas", "-a", help="The atlas, as the "
                                              "other commands take it (same as ATLAS)."),
    as_json: bool = json_option("Print the summary as JSON."),
) -> None:
    """Show an atlas: model, scoring settings, inputs, row counts and sizes on disk."""
    import seqatlas

    if (atlas is None) == (atlas_flag is None):
        raise typer.BadParameter("give the atlas directory once: `seqatlas info ATLAS` or "
                                 "`seqatlas info --atlas ATLAS`")
    atlas = atlas or atlas_flag

    summary = seqatlas.info(atlas)
    if as_json:
        Console().print_json(json.dumps(summary))
    else:
        print_info(summary)
    if summary["damaged"]:
        from seqatlas.errors import AtlasDamagedError

        raise AtlasDamagedError(
            f"{len(summary['damaged'])} committed part(s) of {atlas} are damaged; `seqatlas "
            f"verify --atlas {atlas}` lists them, `seqatlas repair --atlas {atlas}` rewrites "
            "them from the inputs")


def _number(value) -> str:
    return f"{value:,}" if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else "?"


def print_info(summary: dict, console: Console | None = None) -> None:
    """The summary as text; a value a hand-edited manifest lacks prints as ``?``."""
    console = console or Console()
    model, scoring = summary["model"] or {}, summary["scoring"] or {}
    how = "detected" if summary.get("kind_detected") else "given"
    # paths are printed whole on one line (soft_wrap: the terminal wraps them, rich never
    # breaks or crops them), so they can be copied even from a narrow terminal
    version = summary.get("version")
    log = (f"version {version:,}" if isinstance(version, int) else
           "written before the commit log")
    console.print(f"[bold]atlas[/] {escape(summary['path'])}  (kind: {summary['kind']}, "
                  f"{how}; {log}, updated {summary['updated']})", highlight=False,
                  soft_wrap=True)
    tokenizer = model.get("tokenizer") or {}
    console.print(f"[bold]model[/] {escape(str(model.get('name', '?')))} "
                  f"({model.get('model_type', '?')}, {_number(model.get('parameters'))} "
                  f"parameters, tokenizer {tokenizer.get('family', '?')}, weights sha256 "
                  f"{str(model.get('weights_sha256', '?'))[:12]}…{_adapter_words(model)})",
                  highlight=False)
    layers = scoring.get("layers") or [scoring.get("layer")]
    layer = (f", layer{'s' if len(layers) > 1 else ''} {', '.join(map(str, layers))}"
             if scoring.get("embeddings") else "")
    strands = f", strands {scoring.get('strands', '?')}" if summary["kind"] != "protein" else ""
    copies = f", copy k-mer {scoring['copy_k']}" if scoring.get("copy_k") else ", copies off"
    letters = scoring.get("distribution_letters")
    distributions = (f", distributions {scoring.get('letter_dtype')} over {letters}"
                     if scoring.get("letter_dtype") and letters else ", distributions none")
    console.print(f"[bold]scoring[/] likelihood {scoring.get('likelihood', '?')}, window "
                  f"{scoring.get('window', '?')} overlap {scoring.get('overlap', '?')}, "
                  f"embeddings {scoring.get('embedding_dtype') or 'none'}{layer}{strands}"
                  f"{copies}{distributions}", highlight=False)
    pooling = summary.get("pooling")
    if pooling:
        per = f"{pooling['bin']}-base bin" if pooling["bin"] else "sequence"
        console.print(f"[bold]pooled[/] {', '.join(pooling['poolings'])} per {per}, layer(s) "
                      f"{', '.join(map(str, pooling['layers']))}", highlight=False)
    numbers = ("parts", "rows", "on disk", "bytes/row")
    console.print(FittedTable(
        ("table", *numbers),
        ([name, str(t["parts"]), f"{t['rows']:,}", format_size(t["bytes"]),
          f"{t['bytes'] / t['rows']:.1f}" if t["rows"] else "-"]
         for name, t in summary["tables"].items()),
        title="tables", right=numbers, keys=("table",)))
    if summary.get("positions_unscored"):
        console.print(f"{summary['positions_unscored']:,} positions lie in long N runs and "
                      "were not scored (null logp, null window bounds).")
    for i in summary["inputs"]:
        console.print(Text.assemble(
            ("input", "bold"), f" {i['path']}: {_number(i['records'])} records, "
            f"{_number(i['residues'])} residues, {format_size(i['size'])}, sha256 "
            f"{i['sha256'][:12]}…"), highlight=False, soft_wrap=True)
    for damage in summary.get("damaged", []):
        console.print(f"damaged: {escape(damage)}", style="bold red", highlight=False)
    for warning in summary.get("warnings") or []:
        console.print(f"[bold yellow]warning:[/] {escape(str(warning.get('message', '?')))}",
                      highlight=False)


def _gain(value) -> str:
    return "-" if value is None else f"{value:+.3f}"


def _table(title: str, columns: list[str], rows, *, text: tuple[str, ...] = ()
           ) -> FittedTable:
    """The first column a key (kept whole, like numbers) unless it is one of ``text``, the
    columns folded when the table is too wide, left-aligned; the others right-aligned.
    Nothing is cut."""
    return FittedTable(columns, rows, title=title,
                       right=[c for c in columns[1:] if c not in text],
                       keys=[c for c in columns[:1] if c not in text])


def print_demo(summary: dict) -> None:
    """What :func:`seqatlas.demo` did: both atlases, each stage's results in brief, the
    seconds per stage, and where the report is (the last line)."""
    console = Console()
    for name in ("proteins", "dna"):
        part = summary[name]
        print_info(part["info"], console)
        scoring = part["info"]["scoring"] or {}
        both = any(r["mean_logp_rc"] is not None for r in part["sequences"])
        columns = ["sequence", "scored", "PLL", "mean logp", "pseudo-perplexity", "top-1 acc"]
        if both:
            columns.insert(4, "mean logp (rc)")
        rows = []
        for row in part["sequences"]:
            cells = [row["seq_id"], f"{row['scored']:,}", f"{row['pll']:.1f}",
                     f"{row['mean_logp']:.3f}", f"{row['pseudo_perplexity']:.2f}",
                     f"{row['top1_accuracy']:.2f}"]
            if both:
                cells.insert(4, f"{row['mean_logp_rc']:.3f}")
            rows.append(cells)
        model = (part["info"]["model"] or {}).get("name", "?")
        console.print(_table(f"{model}, {scoring.get('likelihood', '?')} likelihood"
                             f"{', both strands' if both else ''}, per sequence", columns, rows))
        report = part["report"]
        console.print(f"Scored {report['positions_scored']:,} positions in "
                      f"{report['seconds']:.1f} s.\n")
    _print_stages(summary, console)
    stages = summary["stages"]
    console.print(_table("seconds per stage", ["stage", "seconds"],
                         [[name, f"{s:.1f}"] for name, s in stages.items()]
                         + [["all", f"{summary['seconds']:.1f}"]]))
    console.print(f"Explore: seqatlas info {summary['dna']['atlas']}, or in Python "
                  f"seqatlas.Atlas({summary['dna']['atlas']!r}).positions(). For DNA the "
                  "chance level of top-1 accuracy is 0.25 (mean logp -1.386).",
                  highlight=False, soft_wrap=True)
    report = summary["report"]
    console.print(f"[bold]Report:[/] {escape(report['output'])} "
                  f"({format_size(report['bytes'])})", highlight=False, soft_wrap=True)


def _print_stages(summary: dict, console: Console) -> None:
    """The repeats, probes, queries and index of the demo, a few lines each."""
    repeats = summary["repeats"]
    tandem = repeats["tandem"]
    where = (f"tantan {tandem.get('version', '?')}, run now (annotate --run tantan)"
             if repeats["tandem_source"] == "tantan" else
             f"the bundled tantan output {repeats['tandem_file']} (tantan is not installed)")
    console.print(f"[bold]repeats[/] {repeats['copies']['repeats']:,} in-context copy "
                  f"intervals (annotate --detect); {tandem['repeats']:,} tandem repeats from "
                  f"{escape(where)}; {repeats['rows']:,} rows in all.", highlight=False,
                  soft_wrap=True)

    icl = summary["probe_icl"]
    mean = icl["mean"]
    uncontrolled = icl["controls"].get("none")
    console.print(_table(
        f"probe icl ({icl['method']}, {icl['likelihood']}) of every in-context copy: "
        f"{icl['targets_total']:,} targets"
        + (f" ({uncontrolled:,} without an admissible control)" if uncontrolled else "")
        + "; mean gains in nats when the partner (icl) or a matched control region "
        "(control) is masked, net = icl - control",
        ["copy strand", "targets", "positions", "icl", "control", "net"],
        [[g["copy_strand"], f"{g['targets']:,}", f"{g['positions']:,}", _gain(g["icl_gain"]),
          _gain(g["control_gain"]), _gain(g["net_gain"])] for g in icl["gains"]]
        + [["all", f"{mean['targets']:,}", f"{mean['positions']:,}",
            _gain(mean["icl_gain"]), _gain(mean["control_gain"]), _gain(mean["net_gain"])]]))

    anomalies = summary["anomalies"]
    params = anomalies["params"]
    tails = ", ".join(f"{n:,} {tail}" for tail, n in sorted(anomalies["by_tail"].items()))
    top = anomalies["top"][:3]
    one = len({r["seq_id"] for r in top}) == 1
    console.print(_table(
        f"anomalies: {anomalies['regions']:,} regions at |z| >= {params['z']} (min length "
        f"{params['min_length']}){': ' + tails if tails else ''}; {anomalies['with_copy']:,} "
        "mostly at in-context copies. The top by |peak z|"
        + (f" (on {top[0]['seq_id']})" if one else "") + ":",
        ["region", "tail", "peak z", "net gain", "repeat classes"],
        [[("" if one else f"{r['seq_id']}:") + f"{r['start']}-{r['end']}", r["tail"],
          f"{r['peak_z']:.2f}", _gain(r["net_gain"]), r["repeat_classes"] or "-"]
         for r in top], text=("repeat classes",)))

    enrichment = summary["enrichment"]
    rows = []
    for by in ("class", "copy"):
        for r in enrichment[by][:3]:
            rows.append([r["group"], f"{r['anomalous_inside']:,}/{r['n_inside']:,}",
                         f"{r['odds_ratio']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]",
                         f"{r['q_value']:.3g}", _gain(r["mean_net_gain"])])
    console.print(_table("enrichment of anomalous positions by repeat class and by copy "
                         "(the 3 lowest p of each)",
                         ["group", "anomalous/inside", "odds ratio [95% CI]", "q", "net gain"],
                         rows, text=("group",)))

    index = summary["index"]
    recall = index["recall_at_10"]
    console.print(f"[bold]index[/] {index['name']}: {index['type']} ({index['factory']}), "
                  f"{index['metric']}, {index['ntotal']:,} vectors x {index['dim']}, "
                  f"{format_size(index['bytes'])} ({index['bytes_per_vector']:.0f} bytes/"
                  f"vector), recall@10 {'?' if recall is None else f'{recall:.2f}'}",
                  highlight=False)
    knn = summary["knn"]
    for query in knn["queries"]:
        hits = [h for h in knn["hits"] if h["query"] == query][:3]
        console.print(f"[bold]knn[/] {query}: " + ", ".join(
            f"{h['token']} at {h['start']:,} ({h['distance']:.3f}, "
            f"{h['repeat_class'] or 'no repeat'})" for h in hits), highlight=False)

    identity = summary["identity"]
    neighbours = "; ".join(dict.fromkeys(r["neighbours"] for r in identity["rows"]))
    console.print(_table(
        f"identity vs context: {identity['k']} neighbours of {identity['sample']:,} sampled "
        f"tokens from {neighbours}; agreement (chance)",
        ["layer", "identity", "context", "next", "prev"],
        [[str(r["layer"]), *(f"{r[key]:.3f} ({r[key + '_chance']:.3f})"
                             for key in ("identity", "context", "next", "prev"))]
         for r in identity["rows"]]))

    doubling = summary["doubling"]
    settings = doubling["settings"]
    console.print(_table(
        f"probe doubling ({settings['model']}, {settings['method']}, "
        f"{settings['likelihood']}): mean gains in nats",
        ["variant", "sequences", "icl", "control", "net", "doubling"],
        [[variant, str(m["sequences"]), _gain(m["icl_gain"]), _gain(m["control_gain"]),
          _gain(m["net_gain"]), _gain(m["doubling_gain"])]
         for variant, m in doubling["mean"].items()]))
    console.print(f"Doubling table: {escape(doubling['output'])}", highlight=False,
                  soft_wrap=True)


def verify(
    atlas: str = ATLAS,
    as_json: bool = json_option("Print the report as JSON."),
) -> None:
    """Re-hash every committed part against the size and SHA-256 recorded when it was
    committed, and check that the input files are still there; exit 1 if anything is damaged.

    Example: seqatlas verify --atlas my_atlas
    """
    import seqatlas

    report = seqatlas.verify(atlas)
    console = Console()
    if as_json:
        console.print_json(json.dumps(report))
    else:
        console.print(f"{report['parts']:,} parts checked in {escape(report['atlas'])}"
                      + (f" ({report['parts_without_checksum']:,} committed before checksums: "
                         "size only)" if report["parts_without_checksum"] else ""),
                      highlight=False)
        for d in report["damaged"]:
            console.print(f"damaged: {d['table']}/{d['part']}: {d['problem']}", style="red",
                          highlight=False)
        for i in report["inputs"]:
            if i["problem"]:
                console.print(f"input: {escape(i['problem'])} (repair cannot rebuild from it)",
                              highlight=False)
        if report["ok"]:
            console.print("ok: every part is as committed", highlight=False)
    if not report["ok"]:
        from seqatlas.errors import AtlasDamagedError

        raise AtlasDamagedError(f"{len(report['damaged'])} part(s) damaged; `seqatlas repair "
                                f"--atlas {atlas}` rewrites them from the inputs")


def repair(
    atlas: str = ATLAS,
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Scoring actors for "
                                          "re-scoring damaged units (0: in this process)."),
    progress: Progress = PROGRESS,
    no_progress: bool = NO_PROGRESS,
) -> None:
    """Rewrite damaged parts from the atlas's inputs: the sequences table, scored units (the
    atlas's own model and settings), imported or found repeats, detected copies.

    Example: seqatlas repair --atlas my_atlas
    """
    import seqatlas

    report = seqatlas.repair(atlas, workers=workers, progress=progress)
    if not report["damaged"]:
        typer.echo(f"{atlas}: nothing to repair; every part is as committed.", err=True)
        return
    typer.echo(f"{atlas}: repaired {len(report['damaged'])} damaged part(s) "
               f"({report['rescored_units']} unit(s) re-scored, {report['repeats_restored']} "
               "repeats unit(s) restored).", err=True)
    for command in report["rerun"]:
        typer.echo(f"to restore ablations, run: {command}", err=True)


def log(
    atlas: str = ATLAS,
    limit: int = typer.Option(20, "--limit", "-n", min=1, help="How many of the most recent "
                              "commits to list."),
    as_json: bool = json_option("Print the history as JSON."),
) -> None:
    """List the atlas's commits, newest first: version, time, operation, and the parts,
    units and rows each added or removed. Reads only.

    Example: seqatlas log --atlas my_atlas -n 5
    """
    import seqatlas

    history = seqatlas.log(atlas, limit=limit)
    console = Console()
    if as_json:
        console.print_json(json.dumps(history))
        return
    if history["version"] is None:
        console.print(f"{escape(history['atlas'])} was written before the commit log: its "
                      "next write, or `seqatlas upgrade`, gives it one.", highlight=False)
        return
    console.print(f"{escape(history['atlas'])}: version {history['version']:,}",
                  highlight=False)
    numbers = ("version", "parts +", "parts -", "units", "rows +")
    console.print(FittedTable(
        ("version", "time", "operation", *numbers[1:]),
        ([f"{c['version']:,}", str(c["time"]), str(c["operation"]), str(c["parts_added"]),
          str(c["parts_removed"]), str(c["units"]), f"{c['rows_added']:,}"]
         for c in history["commits"]),
        title="commits", right=numbers, keys=("version",)))


def compact(
    atlas: str = ATLAS,
    table: Optional[list[str]] = typer.Option(None, "--table", help="A table to compact: "
                                              "positions or tokens (repeatable; default both)."),
    memory_limit: Optional[str] = typer.Option(None, "--memory-limit", help="The most rows "
                                               "held while sorting, e.g. 2GB or 25% (default "
                                               "a quarter of memory, at most 4 GiB)."),
    as_json: bool = json_option("Print the report as JSON."),
) -> None:
    """Rewrite the many small per-unit parts as few large files sorted by (seq_id, pos),
    swapped in by one commit, so that region reads touch a few row groups. Writes.

    Example: seqatlas compact --atlas my_atlas
    """
    import seqatlas

    report = seqatlas.compact(atlas, tables=tuple(table) if table else None,
                              memory_limit=memory_limit)
    if as_json:
        Console().print_json(json.dumps(report))
        return
    for name, done in report["tables"].items():
        typer.echo(f"{name}: {done['parts_before']:,} parts -> {done['parts_after']:,} "
                   f"({done['rows']:,} rows; {done['rewritten']:,} parts rewritten)", err=True)
    typer.echo(f"{report['atlas']}: now at version {report['version']:,}.", err=True)


def pool(
    atlas: str = ATLAS,
    bin: Optional[int] = typer.Option(None, "--bin", metavar="BASES", help="Bases per bin; "
                                      "0 pools whole sequences (default: the atlas's own, "
                                      "else 1000 for DNA/RNA and 0 for proteins)."),
    replace: bool = typer.Option(False, "--replace", help="Drop the pooled table first (to "
                                 "pool into another --bin)."),
    progress: Progress = PROGRESS,
    no_progress: bool = NO_PROGRESS,
    as_json: bool = json_option("Print the report as JSON."),
) -> None:
    """Pool the stored token embeddings into one vector per sequence or per bin (the mean
    over the tokens starting in it, every stored layer), as ingest does. Writes.

    Example: seqatlas pool --atlas my_atlas --bin 1000
    """
    import seqatlas

    report = seqatlas.pool(atlas, bin=bin, replace=replace,
                           progress="none" if as_json else progress)
    if as_json:
        Console().print_json(json.dumps(report))
        return
    what = "whole sequences" if report["level"] == "sequence" else f"{report['bin']}-base bins"
    typer.echo(f"{report['atlas']}: pooled {report['rows_added']:,} rows ({what}, "
               f"{', '.join(report['poolings'])}, layer(s) "
               f"{', '.join(map(str, report['layers']))}); the pooled table holds "
               f"{report['rows']:,} rows.", err=True)


def upgrade(atlas: str = ATLAS) -> None:
    """Give an atlas written before the commit log its log now (its next write would do
    it): one atomic replace of atlas.json; nothing else changes. Writes.

    Example: seqatlas upgrade --atlas my_atlas
    """
    import seqatlas

    report = seqatlas.upgrade(atlas)
    typer.echo(f"{report['atlas']}: " + ("upgraded to the commit log (version 0)."
                                         if report["upgraded"] else
                                         f"already has its commit log (version "
                                         f"{report['version']:,})."), err=True)


def _adapter_words(model: dict) -> str:
    """The adapter, the objective and the shipped code's hash, where not the defaults."""
    words = [f"adapter {model['adapter']}"] if model.get("adapter") else []
    if model.get("objective"):
        words.append(f"{model['objective']} LM")
    if model.get("code_sha256"):
        words.append(f"its own code sha256 {model['code_sha256'][:12]}…")
    return "".join(f", {w}" for w in words)
