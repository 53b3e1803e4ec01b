"""The throughput work keeps the numbers: blocked heads, measured batch sizes and thread
settings give the values main gave; fast mode's stride is a recorded, reproducible setting;
bfloat16 is opt-in, recorded and within its stated tolerance of float32."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

import seqatlas
from seqatlas.scoring import scorer as scorer_module

FIXTURE = Path(__file__).parent / "data" / "main_atlas"
MAIN = dict(model="dnabert6-tiny", likelihood="fast", strands="both", workers=0,
            progress=False, layer=[-1, 1])


def _logp(atlas: Path, columns=("logp", "logp_rc", "logp_unmasked", "entropy")) -> dict:
    table = seqatlas.Atlas(atlas).positions(columns=["seq_id", "pos", *columns])
    table = table.sort_by([("seq_id", "ascending"), ("pos", "ascending")])
    return {c: table[c].to_numpy(zero_copy_only=False).astype(float) for c in columns}


def _same(got: dict, expected: dict, tol: float) -> None:
    for column, values in expected.items():
        assert np.array_equal(np.isnan(got[column]), np.isnan(values)), column
        known = ~np.isnan(values)
        assert np.max(np.abs(got[column] - values)[known], initial=0.0) <= tol, column


def _dna(n: int, seed: int) -> str:
    rng = random.Random(seed)
    motif = "".join(rng.choice("ACGT") for _ in range(40))
    body = "".join(rng.choice("ACGT") for _ in range(n))
    return body[: n // 3] + motif + body[n // 3 : 2 * n // 3] + motif + body[2 * n // 3 :]


def test_main_atlas_values_are_reproduced_within_1e5(tmp_path):
    """tests/data/main_atlas (fast, both strands, stride 40 as main recorded it) scored again
    from its inputs, through every optimisation, gives main's logp within 1e-5."""
    expected = _logp(FIXTURE / "atlas")
    recorded = json.loads((FIXTURE / "atlas" / "atlas.json").read_text())["scoring"]["fast"]
    assert recorded["stride"] == 40
    report = seqatlas.ingest(FIXTURE / "inputs" / "first.fa", atlas=tmp_path / "again",
                             fast_stride=recorded["stride"], **MAIN)
    assert report.units_scored > 0
    _same(_logp(tmp_path / "again"), expected, 1e-5)
    again = json.loads((tmp_path / "again" / "atlas.json").read_text())
    assert again["scoring"]["fast"] == recorded and "precision" not in again["scoring"]


@pytest.mark.parametrize("mode", ["exact", "fast", "unmasked"])
def test_a_chrx_sample_scores_as_main_did_within_1e5(tmp_path, mode):
    """701 + 171 bases of held-out chrX (tests/data/chrx_sample; expected.json was written by
    main 27de405, before the throughput work): exact, fast at main's stride and unmasked."""
    sample = Path(__file__).parent / "data" / "chrx_sample"
    expected = json.loads((sample / "expected.json").read_text())["modes"][mode]
    options = {"fast_stride": 40} if mode == "fast" else {}
    seqatlas.ingest(sample / "sample.fa", atlas=tmp_path / "a", model="dnabert6-tiny",
                    likelihood=mode, embeddings=False, workers=0, progress=False, **options)
    got = seqatlas.Atlas(tmp_path / "a").sql(
        "SELECT seq_id, pos, logp, logp_unmasked, entropy FROM positions "
        "ORDER BY seq_id, pos").to_pylist()
    assert len(got) == len(expected) == 871
    worst = 0.0
    for g, e in zip(got, expected):
        assert (g["seq_id"], g["pos"]) == (e["seq_id"], e["pos"])
        for key in ("logp", "logp_unmasked", "entropy"):
            assert (g[key] is None) == (e[key] is None), key
            if e[key] is not None:
                worst = max(worst, abs(g[key] - e[key]))
    assert worst <= 1e-5


def test_an_old_fast_atlas_extends_with_its_recorded_stride(tmp_path):
    """Extending main's atlas takes its stride from the manifest, not today's default."""
    shutil.copytree(FIXTURE / "atlas", tmp_path / "atlas")
    expected = json.loads((FIXTURE / "expected.json").read_text())["extended_positions_c"]
    seqatlas.ingest(FIXTURE / "inputs" / "second.fa", atlas=tmp_path / "atlas", **MAIN)
    got = seqatlas.Atlas(tmp_path / "atlas").sql(
        "SELECT pos, logp, logp_rc FROM positions WHERE seq_id = 'chrC' ORDER BY pos").to_pylist()
    assert len(got) == len(expected) > 100
    for g, e in zip(got, expected):
        for key in ("logp", "logp_rc"):
            if e[key] is None:
                assert g[key] is None
            else:
                assert abs(g[key] - e[key]) <= 1e-5


@pytest.mark.parametrize("mode", ["exact", "fast", "unmasked"])
def test_head_blocks_and_batch_sizes_never_change_values(tmp_path, monkeypatch, mode):
    """The head computed in blocks of 64 rows or all at once, with batches of one row or of
    16k tokens: identical values within float tolerance (batch composition never counts)."""
    fasta = tmp_path / "s.fa"
    fasta.write_text(f">a\n{_dna(300, 1)}\n>b\n{_dna(170, 2)}\n")
    runs = {}
    for name, block, batch in (("small", 64 * 4096, 140), ("large", 1 << 30, 16384)):
        monkeypatch.setattr(scorer_module, "HEAD_BLOCK_ELEMENTS", block)
        seqatlas.ingest(fasta, atlas=tmp_path / name, model="dnabert6-tiny", likelihood=mode,
                        embeddings=False, workers=0, progress=False, batch_tokens=batch)
        runs[name] = _logp(tmp_path / name, ("logp", "logp_unmasked", "entropy"))
    _same(runs["small"], runs["large"], 2e-5)
    assert np.isfinite(runs["small"]["logp_unmasked"]).sum() > 400


def test_batch_size_is_measured_among_the_candidates_and_recorded(tmp_path, monkeypatch):
    from seqatlas.checkpoints.loading import load_model, resolve_model

    model = load_model(resolve_model("dnabert6-tiny", kind="dna"))
    scorer = scorer_module.Scorer(model, likelihood="unmasked", embeddings=False, layer=4)
    assert scorer.batch_tokens is None  # measured when first needed, not at construction
    scorer_module._MEASURED_BATCHES.clear()
    chosen = scorer.batch_budget()
    rates = scorer.batch_tokens_measured
    assert chosen in scorer_module.BATCH_TOKEN_CANDIDATES and chosen in rates
    assert set(rates) <= set(scorer_module.BATCH_TOKEN_CANDIDATES)
    assert all(r > 0 for r in rates.values()) and rates[chosen] == max(rates.values())
    # sizes are tried smallest first; the sweep stops once one is clearly slower
    tried = sorted(rates)
    assert tried == list(scorer_module.BATCH_TOKEN_CANDIDATES[: len(tried)])
    # measured once per process and model: a second scorer reuses it
    again = scorer_module.Scorer(model, likelihood="unmasked", embeddings=False, layer=4)
    assert again.batch_budget() == chosen and again.batch_tokens_measured == rates
    # a given budget is used as given, never measured
    fixed = scorer_module.Scorer(model, likelihood="unmasked", embeddings=False, layer=4,
                                 batch_tokens=300)
    assert fixed.batch_budget() == 300 and fixed.batch_tokens_measured is None
    # and a packed batch never exceeds the budget unless one row alone does
    lengths = [130] * 50 + [40] * 7
    for batch in scorer_module.pack_batches(lengths, chosen):
        assert len(batch) == 1 or max(lengths[i] for i in batch) * len(batch) <= chosen

    # the run record says what the worker used
    fasta = tmp_path / "s.fa"
    fasta.write_text(f">a\n{_dna(400, 3)}\n")
    report = seqatlas.ingest(fasta, atlas=tmp_path / "atlas", model="dnabert6-tiny",
                             likelihood="unmasked", embeddings=False, workers=0,
                             progress=False)
    engine = json.loads((tmp_path / "atlas" / "atlas.json").read_text())["runs"][-1]["engine"]
    assert engine["batch_tokens"] in scorer_module.BATCH_TOKEN_CANDIDATES
    assert engine["precision"] == "float32" and engine["device"] == "cpu"
    assert 1 <= engine["threads"] <= len(os.sched_getaffinity(0))
    assert report.as_dict()["engine"] == engine
    units = json.loads((tmp_path / "atlas" / "atlas.json").read_text())["units"]
    assert not any("batch_tokens" in u for u in units.values())  # the run's, not a unit's


def test_threads_never_exceed_the_cores_this_process_may_use(monkeypatch):
    import torch

    from seqatlas.checkpoints.loading import resolve_model
    from seqatlas.scoring.workers import ScoringWorker, usable_cores

    before = torch.get_num_threads()
    try:
        spec = resolve_model("dnabert6-tiny", kind="dna")
        worker = ScoringWorker(spec, {"likelihood": "unmasked", "embeddings": False,
                                      "layer": [4]}, threads=64)
        assert torch.get_num_threads() == min(64, usable_cores()) <= os.cpu_count()
        assert worker.engine()["threads"] == torch.get_num_threads()
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
        assert usable_cores() == 1
        ScoringWorker(spec, {"likelihood": "unmasked", "embeddings": False, "layer": [4]},
                      threads=8)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_fast_stride_is_a_recorded_setting(tmp_path):
    """--fast-stride sets the passes, the manifest records it, an extension keeps it and a
    different one is refused; the overlapping 6-mer default is the measured one."""
    from seqatlas.checkpoints.loading import resolve_model

    tokenizer = resolve_model("dnabert6-tiny", kind="dna").tokenizer()
    assert tokenizer.fast_stride() == 20
    fasta, more = tmp_path / "a.fa", tmp_path / "b.fa"
    fasta.write_text(f">a\n{_dna(260, 4)}\n")
    more.write_text(f">b\n{_dna(200, 5)}\n")
    options = dict(model="dnabert6-tiny", likelihood="fast", embeddings=False, workers=0,
                   progress=False)
    seqatlas.ingest(fasta, atlas=tmp_path / "s12", fast_stride=12, **options)
    seqatlas.ingest(fasta, atlas=tmp_path / "default", **options)
    fast = {d: json.loads((tmp_path / d / "atlas.json").read_text())["scoring"]["fast"]
            for d in ("s12", "default")}
    assert fast["s12"]["stride"] == 12 and fast["s12"]["mask_rate"] == 0.5
    assert fast["default"]["stride"] == 20 and fast["default"]["mask_rate"] == 0.3
    assert not np.allclose(_logp(tmp_path / "s12")["logp"], _logp(tmp_path / "default")["logp"],
                           equal_nan=True)
    seqatlas.ingest(more, atlas=tmp_path / "s12", **options)  # no stride given: the atlas's
    alone = tmp_path / "alone"
    seqatlas.ingest(more, atlas=alone, fast_stride=12, **options)
    ext = seqatlas.Atlas(tmp_path / "s12").sql(
        "SELECT logp FROM positions WHERE seq_id = 'b' ORDER BY pos")["logp"].to_numpy()
    np.testing.assert_allclose(ext, _logp(alone)["logp"], atol=1e-6)
    with pytest.raises(seqatlas.SeqAtlasError, match="stride"):
        seqatlas.ingest(more, atlas=tmp_path / "s12", fast_stride=20, **options)
    with pytest.raises(seqatlas.SeqAtlasError, match="--fast-stride"):
        seqatlas.ingest(fasta, atlas=tmp_path / "x", model="dnabert6-tiny",
                        likelihood="exact", fast_stride=4, workers=0, progress=False)
    assert not (tmp_path / "x").exists()
    with pytest.raises(seqatlas.SeqAtlasError, match="--fast-stride"):  # exact by default
        seqatlas.ingest(fasta, atlas=tmp_path / "x", model="dnabert6-tiny", fast_stride=4,
                        workers=0, progress=False)
    assert not (tmp_path / "x").exists()


def test_bfloat16_is_opt_in_recorded_and_within_its_tolerance(tmp_path):
    from seqatlas.scoring.scorer import BF16_TOLERANCE

    fasta = tmp_path / "s.fa"
    fasta.write_text(f">a\n{_dna(600, 6)}\n")
    options = dict(model="dnabert6-tiny", likelihood="unmasked", embeddings=False, workers=0,
                   progress=False)
    seqatlas.ingest(fasta, atlas=tmp_path / "fp32", **options)
    seqatlas.ingest(fasta, atlas=tmp_path / "bf16", precision="bfloat16", **options)
    fp32 = _logp(tmp_path / "fp32")["logp_unmasked"]
    bf16 = _logp(tmp_path / "bf16")["logp_unmasked"]
    assert not np.array_equal(fp32, bf16)  # it really ran in bf16
    diff = np.abs(fp32 - bf16)
    assert np.nanmax(diff) <= BF16_TOLERANCE["max_abs_logp"]
    assert np.nanmean(diff) <= BF16_TOLERANCE["mean_abs_logp"]
    from scipy.stats import spearmanr
    ok = ~np.isnan(fp32)
    assert spearmanr(fp32[ok], bf16[ok]).statistic >= BF16_TOLERANCE["spearman"]
    manifest = json.loads((tmp_path / "bf16" / "atlas.json").read_text())
    assert manifest["scoring"]["precision"] == "bfloat16"
    assert manifest["runs"][-1]["engine"]["precision"] == "bfloat16"
    assert "precision" not in json.loads((tmp_path / "fp32" / "atlas.json").read_text())["scoring"]
    assert seqatlas.info(tmp_path / "bf16")["scoring"]["precision"] == "bfloat16"
    # an extension keeps the atlas's precision; asking for another is refused, writing nothing
    more = tmp_path / "more.fa"
    more.write_text(f">b\n{_dna(200, 7)}\n")
    before = (tmp_path / "fp32" / "atlas.json").read_bytes()
    with pytest.raises(seqatlas.SeqAtlasError, match="precision"):
        seqatlas.ingest(more, atlas=tmp_path / "fp32", precision="bfloat16", **options)
    assert (tmp_path / "fp32" / "atlas.json").read_bytes() == before
    with pytest.raises(seqatlas.SeqAtlasError, match="--precision"):
        seqatlas.ingest(more, atlas=tmp_path / "y", precision="float16", **options)


def test_cli_precision_and_fast_stride_match_the_library(tmp_path):
    from seqatlas.cli.main import main

    fasta = tmp_path / "s.fa"
    fasta.write_text(f">a\n{_dna(200, 8)}\n")
    code = main(["ingest", str(fasta), "--atlas", str(tmp_path / "cli"), "--model",
                 "dnabert6-tiny", "--likelihood", "fast", "--fast-stride", "16", "--precision",
                 "bfloat16", "--embeddings", "none", "--workers", "0", "--no-progress"])
    assert code == 0
    seqatlas.ingest(fasta, atlas=tmp_path / "api", model="dnabert6-tiny", likelihood="fast",
                    fast_stride=16, precision="bfloat16", embeddings=False, workers=0,
                    progress=False)
    scoring = {d: json.loads((tmp_path / d / "atlas.json").read_text())["scoring"]
               for d in ("cli", "api")}
    assert scoring["cli"] == scoring["api"]
    assert scoring["cli"]["fast"]["stride"] == 16 and scoring["cli"]["precision"] == "bfloat16"
    np.testing.assert_array_equal(_logp(tmp_path / "cli")["logp"], _logp(tmp_path / "api")["logp"])
    assert main(["ingest", str(fasta), "--atlas", str(tmp_path / "bad"), "--model",
                 "dnabert6-tiny", "--fast-stride", "0", "--workers", "0"]) == 1
    assert not (tmp_path / "bad").exists()


def test_small_models_get_one_single_threaded_worker_per_core_when_units_keep_them_busy():
    from seqatlas.checkpoints.loading import resolve_model
    from seqatlas.scoring.workers import per_core_workers, plan_actors

    free = {"workers": None, "cpus_per_worker": None, "gpus_per_worker": None}
    two = [{"CPU": 2}]
    assert plan_actors(two, **free, units=4, small_model=True)[:3] == (2, 1, 0.0)
    # too few units to keep two busy: one worker with both cores, as before
    assert plan_actors(two, **free, units=3, small_model=True)[:3] == (1, 2, 0.0)
    assert plan_actors(two, **free, units=40, small_model=False)[:3] == (1, 2, 0.0)
    # anything given is kept; GPUs are used as before
    assert plan_actors(two, **{**free, "workers": 1}, units=40, small_model=True)[:3] == \
        (1, 2, 0.0)
    assert plan_actors(two, **{**free, "cpus_per_worker": 2}, units=40,
                       small_model=True)[:3] == (1, 2, 0.0)
    assert plan_actors([{"CPU": 4, "GPU": 1}], **free, units=40, small_model=True)[:3] == \
        (1, 4, 1.0)
    assert plan_actors([{"CPU": 1}], **free, units=40, small_model=True)[:3] == (1, 1, 0.0)
    assert per_core_workers(resolve_model("dnabert6-tiny", kind="dna"))

    class Big:
        hidden_size, parameters = 1280, 650_000_000

    assert not per_core_workers(Big())


def test_readme_figures_of_this_work_are_the_code_constants():
    from seqatlas.checkpoints.tokenizers import OVERLAPPING_KMER_MASK_RATE

    readme = " ".join((Path(__file__).parent.parent / "README.md").read_text().split())
    assert f"every (k/{OVERLAPPING_KMER_MASK_RATE:g})th base" in readme
    sizes = scorer_module.BATCH_TOKEN_CANDIDATES
    assert f"the fastest of {sizes[0]:,} to {sizes[-1]:,} tokens" in readme
    assert f"Default: {scorer_module.DEFAULT_BATCH_TOKENS['cuda']:,} on a GPU" in readme
    tolerance = scorer_module.BF16_TOLERANCE
    assert (f"within {tolerance['max_abs_logp']:g} nats of float32 at every position, "
            f"{tolerance['mean_abs_logp']:g} on average, Spearman >= {tolerance['spearman']:g}"
            ) in readme
