"""benchmarks/gpu_check.py on a machine without CUDA (every CUDA part skipped with its reason,
the CPU parts run for real), and benchmarks/flops.py's FLOP count against a hand count."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _flops_module():
    spec = importlib.util.spec_from_file_location("benchmark_flops", ROOT / "benchmarks" / "flops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _random_dna(length: int, seed: int) -> str:
    return "".join(np.random.default_rng(seed).choice(list("ACGT"), length))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One ``gpu_check.py --quick`` run on generated data (no ../shared needed)."""
    work = tmp_path_factory.mktemp("gpu_check")
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--data",
                           str(work / "no-such-data"), "--out", str(work / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert len(lines) == 1, done.stdout[-3000:]
    return json.loads(lines[0][len("RESULT "):]), done.stdout, work / "out"


@pytest.mark.slow
def test_quick_run_on_cpu_skips_cuda_parts_and_measures_the_rest(quick_run):
    result, stdout, out = quick_run
    assert result["ok"] is True and result["failures"] == []
    assert result["cuda"] is False and result["precision"] == "float32"
    assert result["data"].startswith("generated DNA")
    # every CUDA part skipped, with the reason, in the RESULT and in the text
    assert set(result["skipped"]) == {"gpu_ingest", "gpu_mfu", "bf16_vs_fp32", "gpu_index"}
    for part, reason in result["skipped"].items():
        assert "torch.cuda.is_available() is False" in reason
        assert f"{part}: skipped: {reason}" in stdout
    assert "comparison" not in result and "gpu" not in result["index"]

    rate = result["matmul_rate"]
    assert rate["device"] == "cpu" and rate["dtype"] == "float32"
    assert 1e8 < rate["flops_per_s"] < 1e14
    modes = result["modes"]
    assert set(modes) == {"exact", "fast", "unmasked"}
    for mode, done in modes.items():
        assert done["positions"] > 0 and done["positions_per_s"] > 0, mode
        assert done["precision_recorded"] == "float32", mode
        assert 0 < done["mfu"] < 1, mode
        assert done["mfu"] == pytest.approx(
            done["positions_per_s"] * done["flops_per_base"] / rate["flops_per_s"])
    unmasked = modes["unmasked"]["flops_per_base"]
    # BERT 4 x 128 on 130-token windows of 133 bases: ~3.7 MFLOP per base unmasked
    assert 1e6 < unmasked < 1e7
    assert modes["exact"]["flops_per_base"] > 20 * unmasked  # one pass per base
    assert unmasked < modes["fast"]["flops_per_base"] < modes["exact"]["flops_per_base"]
    # attention is counted on the CPU as well (torch's counter lacks its CPU kernel)
    assert any("attention" in op for op in modes["unmasked"]["flops_by_op"])

    # the CPU index build ran, over every token, calibrated and checked against exact search
    cpu = result["index"]["cpu"]
    assert cpu["gpu"] is False and cpu["seconds"] > 0
    assert cpu["factory"].startswith("IVF") and cpu["ntotal"] > 1000
    assert cpu["calibrated"]["nprobe"] >= 1
    assert 0.9 <= cpu["recall_at_10_vs_exact"] <= 1.0
    # --out keeps the atlases
    assert (out / "cpu_unmasked" / "atlas.json").exists()


def _encoder_flops(tokens: int, d: int, ff: int, layers: int) -> int:
    """One row: Q, K, V, output and the two feed-forward projections on every token, and the
    two attention products (Q K^T, A V)."""
    return layers * (tokens * 2 * (4 * d * d + 2 * d * ff) + 4 * tokens * tokens * d)


def _hand_count(flops, model: str, residues: str, *, mode: str, window: int,
                overlap: int) -> tuple[int, int, int]:
    """(FLOPs, bases, linear-layer parameters) of ``mode`` for an overlapping k-mer BERT,
    counted from its config: the encoder on every row, the MLM head (transform, decoder over
    the whole vocabulary) and the letter marginalisation on every readout token."""
    from seqatlas.checkpoints.loading import resolve_model

    spec = resolve_model(model, kind="dna")
    config = flops.loaded_model(model)[1].model.config
    tokenizer = spec.tokenizer()
    d, ff, layers, vocab = (config.hidden_size, config.intermediate_size,
                            config.num_hidden_layers, config.vocab_size)
    k = tokenizer.k
    candidates = len(tokenizer.candidates[k].token_ids)
    letters = len(tokenizer.scored_letters)
    head = 2 * d * d + 2 * d * vocab + 2 * candidates * k * letters  # per readout token
    total = bases = 0
    for job in flops.window_jobs(residues.encode(), window=window, overlap=overlap):
        n_tokens = job.length - k + 1
        rows_tokens = n_tokens + 2  # [CLS] ... [SEP]
        a, b = job.own_start - job.start, job.own_end - job.start
        bases += b - a
        readout = min(b, n_tokens) - max(0, a - k + 1)  # tokens covering an owned base
        total += _encoder_flops(rows_tokens, d, ff, layers) + readout * head
        if mode == "exact":  # one masked pass per owned base, read at its covering tokens
            for p in range(a, b):
                cover = min(p, n_tokens - 1) - max(0, p - k + 1) + 1
                total += _encoder_flops(rows_tokens, d, ff, layers) + cover * head
    linear = layers * (4 * d * d + 2 * d * ff) + d * d + d * vocab
    return total, bases, linear


def test_flops_per_base_matches_a_hand_count():
    flops = _flops_module()
    residues = _random_dna(1500, seed=3)
    details: dict = {}
    counted = flops.flops_per_base("dnabert6-tiny", likelihood="unmasked", residues=residues,
                                   batch_tokens=4096, details=details)
    window, overlap = flops.ingest_geometry("dnabert6-tiny")
    assert (window, overlap) == (details["window"], details["overlap"]) == (133, 33)
    expected, bases, linear = _hand_count(flops, "dnabert6-tiny", residues, mode="unmasked",
                                          window=window, overlap=overlap)
    assert details["bases"] == bases == 1500
    assert counted * bases == pytest.approx(expected, rel=0.01)
    # the brief's bound: at least 2 x (linear-layer parameters) x (tokens run per base), at
    # most 1.5 times that (attention, and the head's marginalisation, on top)
    tokens_per_base = details["computed_tokens"] / bases
    assert 2 * linear * tokens_per_base <= counted <= 1.5 * 2 * linear * tokens_per_base
    assert 2.5e6 < counted < 5e6


def test_flops_per_base_exact_counts_one_pass_per_base():
    flops = _flops_module()
    residues = _random_dna(90, seed=4)
    # a small window keeps the exact passes cheap (and checks that geometry is honoured)
    counted = flops.flops_per_base("dnabert6-tiny", likelihood="exact", residues=residues,
                                   window=40, overlap=10, batch_tokens=4096)
    expected, bases, _ = _hand_count(flops, "dnabert6-tiny", residues, mode="exact", window=40,
                                     overlap=10)
    assert counted * bases == pytest.approx(expected, rel=0.01)


def test_utilisation_and_matmul_rate():
    flops = _flops_module()
    assert flops.utilisation(1000.0, 3e6, 6e9) == pytest.approx(0.5)
    rate = flops.matmul_rate("cpu", n=256, seconds=0.05)
    assert 1e7 < rate < 1e14
