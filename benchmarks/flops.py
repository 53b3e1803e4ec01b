"""FLOP helpers shared by the benchmarks: the machine's dense matmul rate, a model's FLOPs per
scored base (counted exactly by torch's FlopCounterMode around ``Scorer.score``), and model
FLOP utilisation.

Import from a benchmark script run from ``benchmarks/`` (``sys.path[0]`` is the script's
directory)::

    from flops import flops_per_base, matmul_rate, utilisation
"""

from __future__ import annotations

import time

import torch

# ops FlopCounterMode leaves uncounted that the scorer runs: CPU scaled-dot-product attention
# (the CUDA kernels, flash / memory-efficient / cuDNN, are in torch's own registry)
_EXTRA_SDPA_OPS = ("_scaled_dot_product_flash_attention_for_cpu",
                   "_scaled_dot_product_fused_attention_overrideable")

_MODELS: dict[tuple, object] = {}  # (model, kind, device) -> (spec, loaded model)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device="cpu", dtype=torch.float32, n: int = 2048, seconds: float = 1.0) -> float:
    """The measured dense matmul rate of ``device`` in ``dtype``, in FLOP/s.

    Square ``n`` x ``n`` @ ``n`` x ``n`` products (``2 n^3`` FLOPs each, as FlopCounterMode
    counts them) repeated for about ``seconds`` after a warm-up; CUDA is synchronised before
    each clock read. The rate is that of the fastest timed block of products (on CUDA, blocks
    grow until launch and synchronisation costs vanish), so a machine shared with other work
    reads its peak rather than an average dragged down by whatever else ran. On CPU the
    products run on torch's current thread count (``torch.get_num_threads()``)."""
    device = torch.device(device)
    generator = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    # warm-up: kernel selection, clocks ramping up, caches
    warm_until = time.perf_counter() + min(0.25, seconds / 4)
    while True:
        torch.mm(a, b, out=out)
        _sync(device)
        if time.perf_counter() >= warm_until:
            break
    block, best = 1, 0.0
    deadline = time.perf_counter() + seconds
    while True:
        began = time.perf_counter()
        for _ in range(block):
            torch.mm(a, b, out=out)
        _sync(device)
        elapsed = time.perf_counter() - began
        best = max(best, 2.0 * n ** 3 * block / elapsed)
        if time.perf_counter() >= deadline:
            return best
        if device.type == "cuda" and elapsed < 0.02:
            block *= 2


def _sdpa_mapping() -> dict:
    """FlopCounterMode formulas for the attention kernels its registry lacks (shapes in,
    FLOPs out: the two batched products QK^T and AV, as torch counts its CUDA kernels)."""
    from torch.utils.flop_counter import sdpa_flop_count

    def formula(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    mapping = {}
    for name in _EXTRA_SDPA_OPS:
        op = getattr(torch.ops.aten, name, None)
        if op is not None:
            mapping[op] = formula
    return mapping


def loaded_model(model: str, kind: str = "dna", device="cpu"):
    """``(spec, model)`` loaded as a scoring worker loads it; cached per process."""
    from seqatlas.checkpoints.loading import load_model, resolve_model

    key = (model, kind, str(device))
    if key not in _MODELS:
        spec = resolve_model(model, kind=kind)
        _MODELS[key] = (spec, load_model(spec, device=str(device)))
    return _MODELS[key]


def ingest_geometry(model: str, *, kind: str = "dna", window: int | None = None,
                    overlap: int | None = None) -> tuple[int, int]:
    """``(window, overlap)`` in residues as an ingest of ``model`` chooses them when not given:
    the window the model's context holds, and a quarter of it (at least what the tokenizer
    needs) as overlap (seqatlas.scoring.pipeline's window geometry)."""
    from seqatlas.checkpoints.loading import resolve_model
    from seqatlas.scoring.windows import default_overlap

    spec = resolve_model(model, kind=kind)
    tokenizer = spec.tokenizer()
    if window is None:
        window = tokenizer.residues_per_window(spec.context_tokens)
    if overlap is None:
        overlap = max(default_overlap(window), tokenizer.min_overlap())
    return window, overlap


def window_jobs(residues: bytes, *, window: int, overlap: int, seq_id: str = "sample",
                kind: str = "dna", context: str = "centred", skip_n_runs: int = 50) -> list:
    """The :class:`~seqatlas.scoring.scorer.WindowJob` list an ingest makes of one record:
    ``tile_record`` windows, long N runs (DNA/RNA) left unscored."""
    from seqatlas.scoring.plan import n_runs
    from seqatlas.scoring.scorer import WindowJob
    from seqatlas.scoring.windows import tile_record

    skips = n_runs(residues, skip_n_runs) if kind != "protein" and skip_n_runs else []
    return [WindowJob(seq_id=seq_id, token_offset=0, start=w.start, end=w.end,
                      own_start=w.own_start, own_end=w.own_end,
                      residues=residues[w.start:w.end], scored=w.scored,
                      seq_length=len(residues))
            for w in tile_record(len(residues), window, overlap, skips, context)]


def count_flops(fn) -> tuple[int, dict]:
    """``(total FLOPs, {op name: FLOPs})`` of ``fn()``, counted by FlopCounterMode (with the
    CPU attention kernels it lacks)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=_sdpa_mapping())
    with counter:
        fn()
    by_op = {str(op): int(v) for op, v in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), by_op


def flops_per_base(model: str, *, likelihood: str, kind: str = "dna", residues: bytes | str,
                   device="cpu", window: int | None = None, overlap: int | None = None,
                   details: dict | None = None, **scorer_kwargs) -> float:
    """Model FLOPs per scored base of ``likelihood`` mode, counted exactly (FlopCounterMode)
    around :meth:`Scorer.score` on ``residues`` tiled as an ingest tiles them (its default
    window and overlap unless given).

    The scorer is built as an ingest's worker builds it (embeddings off, the last layer, no
    copy detection: none of these changes the FLOPs); ``scorer_kwargs`` go to the
    :class:`Scorer` too (``precision``, ``batch_tokens``, ``strands``...). The count covers
    every forward pass, padding included, and the MLM head on the readout tokens, divided by
    the bases owned by scored windows. ``details``, a dict, receives the totals and the
    FLOPs per op."""
    from seqatlas.scoring.pipeline import window_context
    from seqatlas.scoring.scorer import Scorer

    if isinstance(residues, str):
        residues = residues.encode()
    spec, loaded = loaded_model(model, kind, device)
    window, overlap = ingest_geometry(model, kind=kind, window=window, overlap=overlap)
    context = window_context(likelihood, scorer_kwargs.get("strands", "forward"))
    jobs = window_jobs(residues, window=window, overlap=overlap, kind=kind, context=context)
    scored = sum(j.own_end - j.own_start for j in jobs if j.scored)
    if not scored:
        raise ValueError("the sample has no scored base (empty, or all in long N runs)")
    options = {"embeddings": False, "layer": spec.num_layers, "copy_k": 0,
               "nucleic": kind != "protein", **scorer_kwargs}
    scorer = Scorer(loaded, likelihood=likelihood, **options)
    # lazy set-up outside the count: a scorer given no batch size may time candidate sizes
    # on its first score (the ingest's scorer does the same, once per process)
    budget = getattr(scorer, "batch_budget", None)
    if callable(budget):
        budget()
    total, by_op = count_flops(lambda: scorer.score(jobs))
    if details is not None:
        details.update({"flops": total, "bases": scored, "window": window, "overlap": overlap,
                        "windows": sum(j.scored for j in jobs), "by_op": by_op,
                        "computed_tokens": scorer.computed_tokens,
                        "real_tokens": scorer.real_tokens,
                        "batch_tokens": getattr(scorer, "batch_tokens", None)})
    return total / scored


def utilisation(bases_per_s: float, flops_per_base: float, rate: float) -> float:
    """Model FLOP utilisation: the FLOP/s the model work needs at ``bases_per_s``, as a
    fraction of the measured ``rate`` (FLOP/s)."""
    return bases_per_s * flops_per_base / rate
