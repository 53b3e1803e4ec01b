"""One or two example command lines per command, shown at the end of its ``--help``
(tests/test_cli_usage.py parses every one with the command's own options)."""

from __future__ import annotations

import typer

from seqatlas.cli.access import access_note

EXAMPLES: dict[str, tuple[str, ...]] = {
    "ingest": (
        "seqatlas ingest proteins.fa --atlas prot_atlas",
        "zcat chrX.fa.gz | seqatlas ingest - --atlas dna_atlas --model dnabert6-tiny "
        "--likelihood fast --strands both",
        "seqatlas ingest more.fa --atlas prot_atlas   # scored with the atlas's own settings",
        "seqatlas ingest proteins.fa --atlas esm_atlas --model "
        "~/.cache/torch/hub/checkpoints/esm2_t6_8M_UR50D.pt   # fair-esm weights",
        "seqatlas ingest chrX.fa --atlas gpt_atlas --model ./dna-gpt --strands both"
        "   # a causal LM: --likelihood causal",
    ),
    "info": ("seqatlas info prot_atlas", "seqatlas info prot_atlas --json"),
    "verify": ("seqatlas verify --atlas prot_atlas",),
    "repair": ("seqatlas repair --atlas prot_atlas --workers 2",),
    "log": ("seqatlas log --atlas dna_atlas -n 5", "seqatlas log --atlas dna_atlas --json"),
    "pool": ("seqatlas pool --atlas dna_atlas",
             "seqatlas pool --atlas dna_atlas --replace --bin 5000"),
    "compact": ("seqatlas compact --atlas dna_atlas",
                "seqatlas compact --atlas dna_atlas --table positions --memory-limit 2GB"),
    "upgrade": ("seqatlas upgrade --atlas old_atlas",),
    "demo": ("seqatlas demo --atlas demo_atlases",),
    "report": ("seqatlas report --atlas dna_atlas -o report.html",
               "seqatlas report -a prot_atlas -a dna_atlas --doubling doubling.parquet "
               "-o report.html"),
    "models": ("seqatlas models", "seqatlas models --format tsv", "seqatlas models --adapters"),
    "annotate": (
        "seqatlas annotate hg38.fa.out --atlas dna_atlas --on-mismatch skip",
        "seqatlas annotate --run tantan --atlas prot_atlas",
        "seqatlas annotate --detect --atlas dna_atlas",
    ),
    "query sql": (
        "seqatlas query sql \"SELECT seq_id, avg(logp) AS mean_logp FROM positions GROUP BY "
        "seq_id\" --atlas prot_atlas",
        "seqatlas query sql \"SELECT * FROM anomalies LIMIT 20\" --atlas dna_atlas --format csv",
        "seqatlas query sql \"SELECT pos, logp, z FROM position_z\" --atlas dna_atlas "
        "--region chrX:1000000-1010000",
    ),
    "query anomalies": ("seqatlas query anomalies --atlas dna_atlas --z 4 --tail high",),
    "query enrichment": ("seqatlas query enrichment --atlas dna_atlas --by class",),
    "query similar": (
        "seqatlas query similar --atlas prot_atlas --seq-id P12345 -k 10",
        "seqatlas query similar --atlas dna_atlas --fasta query.fa --where \"repeat_class IS NULL\"",
    ),
    "query knn": (
        "seqatlas query knn --atlas dna_atlas --kmer ACGTAC -k 5",
        "seqatlas query knn --atlas prot_atlas --at P12345:40 --where \"seq_id <> 'P12345'\"",
    ),
    "query identity": ("seqatlas query identity --atlas dna_atlas --sample 500",),
    "export bedgraph": ("seqatlas export bedgraph --atlas dna_atlas -o logp.bedgraph "
                        "--chrom-names ucsc",
                        "seqatlas export bedgraph --atlas dna_atlas --column z "
                        "--region chrX:0-1000000 -o z.bedgraph"),
    "plot track": ("seqatlas plot track --atlas dna_atlas --region chrX:0-100000 -o track.png",
                   "seqatlas plot track --atlas dna_atlas --region chrX:0-5000000 --z 4 "
                   "--tail high -o chrX.svg"),
    "plot mutagenesis": ("seqatlas plot mutagenesis --atlas prot_atlas --seq-id P12345 "
                         "-o scan.png",
                         "seqatlas plot mutagenesis --atlas dna_atlas --region chrX:1000-1300 "
                         "-o scan.svg"),
    "plot enrichment": ("seqatlas plot enrichment --atlas dna_atlas --by class "
                        "-o enrichment.svg",),
    "plot distribution": ("seqatlas plot distribution --atlas prot_atlas -o distribution.png",),
    "plot identity": ("seqatlas plot identity --atlas dna_atlas --sample 500 -o identity.png",),
    "plot icl": ("seqatlas plot icl --atlas dna_atlas --doubling doubling.csv -o icl.png",),
    "plot calibration": ("seqatlas plot calibration --atlas dna_atlas --index default "
                         "-o recall.png",),
    "plot embedding": ("seqatlas plot embedding --atlas prot_atlas --color "
                       "\"split_part(description, ' ', 1)\" -o pca.png",
                       "seqatlas plot embedding --atlas dna_atlas --color repeat_class "
                       "--where \"seq_id = 'chrX'\" --coordinates pca.tsv -o pca.svg"),
    "export bigwig": ("seqatlas export bigwig --atlas dna_atlas -o logp.bw",),
    "export bed": ("seqatlas export bed --atlas dna_atlas --z 4 -o anomalies.bed",),
    "index build": ("seqatlas index build --atlas dna_atlas",
                    "seqatlas index build --atlas dna_atlas --type ivf-pq --name pq",
                    "seqatlas index build --atlas prot_atlas --level pooled --name proteins"),
    "index update": ("seqatlas index update --atlas dna_atlas",
                     "seqatlas index update --atlas dna_atlas --name pq --json"),
    "index list": ("seqatlas index list --atlas dna_atlas",),
    "probe icl": ("seqatlas probe icl --atlas dna_atlas --method shuffle",),
    "probe doubling": ("seqatlas probe doubling proteins.fa --shuffle -o doubling.csv",),
    "variants score": (
        "seqatlas variants score BLAT_ECOLX.csv --atlas prot_atlas --seq-id BLAT_ECOLX "
        "--score-column DMS_score --bin-column DMS_score_bin -o scores.tsv",
        "seqatlas variants score clinvar.vcf.gz --atlas dna_atlas --lookup --store clinvar",
        "seqatlas variants score A23G A23G:K40R --atlas prot_atlas --seq-id P1 --joint",
    ),
    "variants scan": ("seqatlas variants scan --atlas dna_atlas --region X:1000-1300 "
                      "-o scan.parquet",),
}


def add_examples(typer_app: typer.Typer, prefix: str = "") -> None:
    """Give each command registered under ``typer_app`` its :data:`EXAMPLES` as the epilog
    of its help, after what it does to the atlas (:func:`~seqatlas.cli.access.access_note`);
    a command without examples or access is an error: every command has both."""
    for info in typer_app.registered_commands:
        name = (prefix + " " + (info.name or info.callback.__name__)).strip()
        lines = EXAMPLES[name]
        # rich help keeps blank-line-separated paragraphs: one per example
        info.epilog = (access_note(name) + "\n\nExamples:\n\n"
                       + "\n\n".join(f"  {line}" for line in lines))
    for group in typer_app.registered_groups:
        add_examples(group.typer_instance, (prefix + " " + group.name).strip())
