"""Scoring windows with a masked LM: pure planning/tensor functions plus a :class:`Scorer`.

A *view* is one window on one strand, tokenized. A *row* is one forward pass of a view with
some tokens masked (or none); its *readout* tokens are those whose MLM-head output is read,
and its *pairs* say which base each readout token informs. Rows from many windows and
sequences are packed into batches by a token budget after sorting by length, so
equal-length rows share a batch and padding stays rare. The MLM head runs only on readout
tokens.

``causal`` (a causal LM): one unmasked pass per view, in which the hidden state of token t
predicts token t + 1: a token's readout is its predecessor's hidden state (the prefix's BOS
for the first residue; none, so null, without one). A base inside a multi-letter token gets
the per-base marginal of the token distribution over the candidates of the true token's
length, as for a masked token: log p(letter at that offset | the tokens before the token).
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from seqatlas import schema
from seqatlas.errors import ModelError
from seqatlas.copy_detector import copy_columns, window_copies
from seqatlas.fasta import soft_mask
from seqatlas.checkpoints.digests import remembered
from seqatlas.checkpoints.tokenizers import UNSCORABLE, TokenizerFamily, WindowTokens
from seqatlas.scoring.ablation import RescoreTask, region_tokens

LIKELIHOOD_MODES = ("exact", "fast", "unmasked", "causal", "none")
MASKED_MODES = ("exact", "fast", "unmasked")  # modes that need a masked LM
STRANDS = ("forward", "both")
# The arithmetic of the forward passes. bfloat16 (autocast: matmuls in bf16, reductions and
# the head's softmax in float32) is opt-in; on dnabert6-tiny and AntiBERTy it keeps per-position
# logp within BF16_TOLERANCE nats of float32 (tests/test_throughput.py measures it).
PRECISIONS = ("float32", "bfloat16")
BF16_TOLERANCE = {"max_abs_logp": 0.25, "mean_abs_logp": 0.03, "spearman": 0.98}
# The head's logits are computed this many (rows x candidates) at a time on a CPU: a block
# that stays in cache runs the head's matmul and softmax 2-5x faster than one 16k-row block
# (benchmarks/genome_scale.py --part head measures it).
HEAD_BLOCK_ELEMENTS = 1 << 20
# GPUs want large batches. On a CPU the best size depends on the model's shape and the
# caches (AntiBERTy on 2 cores: 2048 tokens ran 25% faster than 16384; dnabert6-tiny peaks
# elsewhere), so it is measured when the scorer first runs: BATCH_TOKEN_CANDIDATES, timed.
DEFAULT_BATCH_TOKENS = {"cuda": 32768}
BATCH_TOKEN_CANDIDATES = (1024, 2048, 4096, 8192, 16384)
BATCH_MEASURE_SECONDS = 3.0  # the most a scorer spends measuring (a big model: fewer sizes)


@dataclass(frozen=True)
class WindowJob:
    """One window of one sequence, with the positions it owns."""

    seq_id: str
    token_offset: int  # added to a token's start to give its global token_id
    start: int
    end: int
    own_start: int
    own_end: int
    residues: bytes  # the window's residues, original case
    scored: bool = True  # False: a long N run, not sent to the model
    seq_length: int = 0  # the whole sequence's length (pooling needs its last bin's end)

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass
class View:
    """A window on one strand: its tokens, letters and the view-local owned bases."""

    job: int
    reverse: bool
    tokens: WindowTokens
    letters: np.ndarray
    owned_start: int
    owned_end: int
    masked_always: np.ndarray | None = None  # token indices masked in every row (ablation)
    starts_sequence: bool = False  # its window starts at the sequence's first residue


@dataclass
class Row:
    view: int
    masked: np.ndarray | None  # token indices masked in this pass; None = unmasked pass
    readout: np.ndarray  # token indices whose MLM-head output is read
    pair_readout: np.ndarray  # per pair: index into readout
    pair_base: np.ndarray  # per pair: view-local base
    length: int  # tokens, special tokens included


def make_view(tokenizer: TokenizerFamily, job: WindowJob, j: int, *, reverse: bool,
              context_tokens: int) -> View:
    residues = tokenizer.reverse_complement(job.residues) if reverse else job.residues
    tokens = tokenizer.tokenize(residues)
    if len(tokens.ids) > context_tokens:
        raise ModelError(
            f"{job.seq_id}:{job.start}-{job.end} tokenizes to {len(tokens.ids)} tokens, more "
            f"than the model's context of {context_tokens}: lower --window")
    a, b = job.own_start - job.start, job.own_end - job.start
    if reverse:
        a, b = job.length - b, job.length - a
    return View(j, reverse, tokens, tokenizer.letter_index(residues), a, b,
                starts_sequence=job.start == 0)


def task_view(tokenizer: TokenizerFamily, task: RescoreTask, *, context_tokens: int) -> View:
    """The view of a rescoring task, with the tokens touching its masked regions masked."""
    tokens = tokenizer.tokenize(task.residues)
    if len(tokens.ids) > context_tokens:
        raise ModelError(f"a {len(task.residues)}-residue window tokenizes to "
                         f"{len(tokens.ids)} tokens, more than the model's context of "
                         f"{context_tokens}")
    masked = region_tokens(tokens.starts, tokens.ends, task.masked_regions)
    return View(0, False, tokens, tokenizer.letter_index(task.residues), task.own_start,
                task.own_end, masked_always=masked if len(masked) else None)


def _pairs(tokenizer, view: View, bases) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Readout tokens covering ``bases`` and the (readout index, base) pairs."""
    token, base = tokenizer.cover_pairs(view.tokens, np.asarray(bases, dtype=np.int64))
    readout, pair_readout = np.unique(token, return_inverse=True)
    return readout.astype(np.int64), pair_readout.astype(np.int64), base


def mask_groups(tokenizer: TokenizerFamily, view: View, *, mode: str, bases=None,
                stride: int | None = None) -> list[list[tuple[tuple, list[int]]]]:
    """The masked passes of ``mode`` over the view's owned bases, each a list of mask units
    ``(covering tokens, bases they hide)``; bases sharing a token share a unit.

    ``exact``: one pass per unit. ``fast``: the owned units, in order, dealt round-robin into
    ``stride`` passes (None: the tokenizer's default, ``fast_stride()``). With ``bases`` (exact only needs those) exact plans only the
    units of ``bases``; fast always deals every owned unit, so a pass masks what it masked
    at ingest.
    """
    owned = np.arange(view.owned_start, view.owned_end) if bases is None or mode == "fast" \
        else np.asarray(bases)
    units: dict[tuple, list[int]] = {}
    for base in owned:
        cover = tuple(tokenizer.covering(view.tokens, int(base)).tolist())
        if cover:
            units.setdefault(cover, []).append(int(base))
    ordered = sorted(units.items())
    if mode == "exact":
        return [[unit] for unit in ordered]
    stride = stride or tokenizer.fast_stride()
    return [group for group in (ordered[r::stride] for r in range(stride)) if group]


def plan_rows(tokenizer: TokenizerFamily, views: list[View], *, mode: str,
              unmasked_pass: bool, stride: int | None = None) -> list[Row]:
    """The forward passes that score ``views`` in ``mode``."""
    rows = []
    for v, view in enumerate(views):
        if view.tokens.n_tokens == 0:
            continue  # shorter than one token: nothing the model can see
        length = len(view.tokens.ids)
        if mode == "causal":
            rows.append(causal_row(tokenizer, view, v,
                                   np.arange(view.owned_start, view.owned_end)))
            continue
        if unmasked_pass:
            readout, pr, pb = _pairs(tokenizer, view, np.arange(view.owned_start, view.owned_end))
            rows.append(Row(v, None, readout, pr, pb, length))
        if mode not in ("exact", "fast"):
            continue
        for group in mask_groups(tokenizer, view, mode=mode, stride=stride):
            rows.append(_masked_row(tokenizer, view, v, group, length))
    return rows


def causal_row(tokenizer: TokenizerFamily, view: View, v: int, bases) -> Row:
    """The causal pass of a view reading out ``bases``: a token is read from the hidden state
    before it, so the first token of a view without a prefix (no BOS) is not read out."""
    readout, pr, pb = _pairs(tokenizer, view, np.asarray(bases, dtype=np.int64))
    if view.tokens.prefix == 0 and len(readout) and readout[0] == 0:
        keep = pr != 0
        readout, pr, pb = readout[1:], pr[keep] - 1, pb[keep]
    return Row(v, None, readout, pr, pb, len(view.tokens.ids))


def _masked_row(tokenizer, view: View, v: int, group, length: int, keep=None) -> Row:
    """The pass masking ``group``'s units, reading out their bases (those in ``keep``)."""
    masked = np.unique(np.concatenate([np.array(cover) for cover, _ in group]))
    bases = [b for _, bs in group for b in bs if keep is None or b in keep]
    readout, pr, pb = _pairs(tokenizer, view, bases)
    return Row(v, masked.astype(np.int64), readout, pr, pb, length)


def plan_target_rows(tokenizer: TokenizerFamily, views: list[View], targets: list,
                     *, mode: str, stride: int | None = None) -> list[Row]:
    """The passes of ``mode`` that score only ``targets[v]`` (view-local bases) of each view:
    the passes of :func:`mask_groups` that hide a target base, read out at target bases."""
    rows = []
    for v, (view, bases) in enumerate(zip(views, targets)):
        if view.tokens.n_tokens == 0 or not len(bases):
            continue
        keep = set(int(b) for b in bases)
        for group in mask_groups(tokenizer, view, mode=mode, bases=bases, stride=stride):
            if any(b in keep for _, bs in group for b in bs):
                rows.append(_masked_row(tokenizer, view, v, group, len(view.tokens.ids), keep))
    return rows


def objective_refusal(spec, likelihood: str) -> str:
    """Why ``likelihood`` cannot be computed with the model of ``spec`` (masked vs causal)."""
    if spec.causal:
        return (f"{spec.name} is a causal (autoregressive) model: it predicts each token from "
                f"those before it and has no mask token, so --likelihood {likelihood} (a "
                "masked-LM mode) is not defined for it; use --likelihood causal")
    return (f"--likelihood causal needs a causal (autoregressive) model, and {spec.name} is a "
            "masked LM: use --likelihood exact, fast or unmasked, or pass a causal checkpoint")


def pack_batches(lengths: list[int], budget: int) -> list[list[int]]:
    """Row indices grouped into batches whose padded size (rows x longest) fits ``budget``.

    Rows are taken longest first (stable), so a batch mixes lengths only at the
    boundary between two lengths; a row longer than the budget gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        longest_if_added = max(longest, lengths[i])
        if current and longest_if_added * (len(current) + 1) > budget:
            batches.append(current)
            current, longest_if_added = [], lengths[i]
        current.append(i)
        longest = longest_if_added
    if current:
        batches.append(current)
    return batches


def unscored_reasons(tokenizer: TokenizerFamily, positions: pa.Table,
                     column: str | None) -> dict[str, int]:
    """How many positions have no score in ``column``, by reason: ``N run`` (a long N run,
    not sent to the model), ``no token: X`` (a residue letter X the vocabulary lacks, e.g. a
    U in DNA or an O without ESM), ``not a residue: X`` (an ambiguity code such as N, B, Z or
    X) and ``no context`` (no token the model could score it from: a window shorter than one
    token, a causal model's first residue without a BOS)."""
    if column is None or positions.num_rows == 0:
        return {}
    missing = positions[column].is_null().to_numpy(zero_copy_only=False)
    if not missing.any():
        return {}
    in_run = positions["window_start"].is_null().to_numpy(zero_copy_only=False)
    ref = positions["ref"].combine_chunks()
    offsets = np.frombuffer(ref.buffers()[1], dtype=np.int32)[ref.offset : ref.offset + len(ref)]
    letters = np.frombuffer(ref.buffers()[2], dtype=np.uint8)[offsets]
    codes = tokenizer.letter_index(letters.tobytes())
    reasons = {"N run": int((missing & in_run).sum())}
    rest = missing & ~in_run
    for label, which in (("no token", rest & (codes == UNSCORABLE)),
                         ("not a residue", rest & (codes < 0) & (codes != UNSCORABLE))):
        found, counts = np.unique(letters[which], return_counts=True)
        reasons.update({f"{label}: {chr(c)}": int(n) for c, n in zip(found, counts)})
    reasons["no context"] = int((rest & (codes >= 0)).sum())
    return {reason: n for reason, n in reasons.items() if n}


def measure_batch_tokens(model, candidates: dict, *, length: int, sizes=BATCH_TOKEN_CANDIDATES,
                         seconds: float = BATCH_MEASURE_SECONDS) -> tuple[int, dict[int, float]]:
    """The batch size (padded tokens) at which ``model``'s forward pass runs fastest here on
    rows of ``length`` tokens, and the measured tokens/s of each size tried. Sizes are tried
    smallest first, twice each after a warm-up (the faster counts), until one is 10% slower
    than the best or the next would overrun ``seconds``. Only sizes in ``sizes`` are tried,
    so a batch never exceeds the largest. Measured once per machine, model, device, threads
    and length, and kept in the user's cache directory."""
    import torch

    spec = model.spec
    length = max(1, int(length))  # a row of the model's context: never beyond it
    cache_key = json.dumps([spec.weights_sha256, str(model.device), torch.get_num_threads(),
                            list(sizes), length, _processor()])
    if cache_key not in _MEASURED_BATCHES:
        # kept in the user's cache: every process on this machine (the Ray actors, a re-run,
        # a repair) then packs a unit into the same batches, so its values are the same bits
        chosen, rates = remembered(BATCH_CACHE_FILE, cache_key, lambda: _timed_sizes(
            model, candidates, length=length, sizes=sizes, seconds=seconds), _measurement)
        _MEASURED_BATCHES[cache_key] = int(chosen), {int(k): v for k, v in rates.items()}
    return _MEASURED_BATCHES[cache_key]


def _processor() -> str:
    """This machine's CPU model and core count (a measurement holds for it alone)."""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh
                          if line.startswith("model name")), "")
    except OSError:
        model = ""
    return f"{model or platform.processor()} x{os.cpu_count()}"


def _measurement(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], int) \
        and isinstance(value[1], dict) and str(value[0]) in value[1]


def _timed_sizes(model, candidates: dict, *, length: int, sizes, seconds: float) -> list:
    """``[the fastest size, {size: tokens/s}]`` timed as :func:`measure_batch_tokens` says."""
    import time

    import torch

    ids = torch.cat([c[0].cpu() for c in candidates.values()]) if candidates else \
        torch.zeros(1, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    rates: dict[int, float] = {}
    started = time.perf_counter()
    with torch.inference_mode():
        for size in sizes:
            rows = max(1, size // length)
            # a size whose two timed passes would overrun the budget is not tried (a big
            # model's largest batches take seconds each)
            if rates and time.perf_counter() - started + \
                    3 * rows * length / max(rates.values()) > seconds:
                break
            pick = torch.randint(len(ids), (rows, length), generator=generator)
            input_ids = ids[pick].to(model.device)
            attention = torch.ones_like(input_ids)
            model.encode(input_ids, attention, None)  # warms this shape up
            best = float("inf")
            for _ in range(2):  # the faster of two passes counts
                began = time.perf_counter()
                model.encode(input_ids, attention, None)
                best = min(best, time.perf_counter() - began)
            rates[size] = rows * length / best
            if rates[size] < 0.9 * max(rates.values()):
                break
    chosen = max(rates, key=lambda size: (rates[size], -size))
    return [chosen, {str(size): rate for size, rate in rates.items()}]


BATCH_CACHE_FILE = "batch_tokens.json"  # in the user's cache directory
# what measure_batch_tokens found, per process (the cache file's entries, once read)
_MEASURED_BATCHES: dict[str, tuple[int, dict[int, float]]] = {}


def distribution_stats(letter_logprobs, true_letter):
    """log p(true letter), entropy (nats) and 1-based rank from letter log-probabilities.

    ``true_letter`` is negative where the residue is not a scored letter: logp is NaN and
    rank 0 (null); where it is :data:`~seqatlas.checkpoints.tokenizers.UNSCORABLE` (a residue
    the model has no token for) the entropy is NaN too. A letter the distribution gives no
    probability (no candidate token holds it there) is unscorable as well: never -inf.
    """
    import torch

    logp_all = torch.log_softmax(letter_logprobs, dim=-1)
    entropy = -(logp_all.exp() * logp_all).nan_to_num().sum(-1)
    index = true_letter.clamp(min=0).unsqueeze(-1)
    logp = logp_all.gather(-1, index).squeeze(-1)
    rank = (logp_all > logp.unsqueeze(-1)).sum(-1) + 1
    known = (true_letter >= 0) & torch.isfinite(logp)
    unscorable = (true_letter == UNSCORABLE) | ((true_letter >= 0) & ~known)
    defined = torch.isfinite(logp_all).any(-1) & ~unscorable
    nan = torch.full_like(logp, float("nan"))
    logp = torch.where(known, logp, nan)
    entropy = torch.where(defined, entropy, nan)
    rank = torch.where(known, rank, torch.zeros_like(rank))
    return logp, entropy, rank


def standard_distribution(letter_logprobs, n_standard: int, true_letter):
    """The log-probabilities of the kind's standard letters (the first ``n_standard``),
    normalised as :func:`distribution_stats` normalises them; NaN rows where the residue is
    unscorable (no distribution is defined there)."""
    import torch

    logp_all = torch.log_softmax(letter_logprobs, dim=-1)[:, :n_standard]
    defined = torch.isfinite(logp_all).any(-1) & (true_letter != UNSCORABLE)
    return torch.where(defined.unsqueeze(-1), logp_all, torch.full_like(logp_all, float("nan")))


def letter_logprobs(tokenizer: TokenizerFamily, probs, true_letter):
    """Log-probabilities of the scored letters from their (unnormalised) probabilities:
    each residue's distribution is over the kind's standard letters, plus its own letter
    when it is an extra letter the vocabulary has (a protein's U with ESM)."""
    import torch

    logp = probs.log()
    n_standard = tokenizer.n_standard
    if logp.shape[-1] > n_standard:
        extra = torch.arange(n_standard, logp.shape[-1], device=logp.device)
        other = extra.unsqueeze(0) != true_letter.unsqueeze(-1)
        logp[:, n_standard:] = logp[:, n_standard:].masked_fill(other, float("-inf"))
    return logp


class _Result:
    """Per-view arrays over the view's owned bases, in view order."""

    def __init__(self, n: int, letters: int = 0):
        nan = np.full(n, np.nan, dtype=np.float32)
        self.logp, self.logp_unmasked, self.entropy = nan.copy(), nan.copy(), nan.copy()
        self.rank = np.zeros(n, dtype=np.int16)
        # (n, letters): the distribution logp comes from, over the standard letters
        self.letters = np.full((n, letters), np.nan, dtype=np.float32) if letters else None
        self.embedding: list[np.ndarray] | None = None  # one (tokens, dim) array per layer
        self.embedding_tokens: np.ndarray | None = None
        self.bos: list[np.ndarray] | None = None  # the BOS/CLS hidden state, one per layer


class Scorer:
    """Scores lists of :class:`WindowJob` with one loaded model."""

    def __init__(self, model, *, likelihood: str, embeddings: bool, layer: int | list[int],
                 batch_tokens: int | None = None, strands: str = "forward", copy_k: int = 0,
                 nucleic: bool = False, distributions: str | None = None,
                 precision: str = "float32", fast_stride: int | None = None):
        import torch

        if precision not in PRECISIONS:
            raise ModelError(f"precision must be one of {', '.join(PRECISIONS)}, not "
                             f"{precision!r}")
        self.model = model
        self.precision = precision
        self.fast_stride = fast_stride  # fast mode's passes per view (None: the tokenizer's)
        # every adapter runs its body and head under model.autocast()
        model.autocast_dtype = torch.bfloat16 if precision == "bfloat16" else None
        self.tokenizer = model.spec.tokenizer()
        self.likelihood = likelihood
        self.causal = likelihood == "causal"
        if self.causal != model.spec.causal and likelihood != "none":
            raise ModelError(objective_refusal(model.spec, likelihood))
        self.embeddings = embeddings
        # embedding layers; the first fills "embedding", each further L "embedding_layer_{L}"
        self.layers = list(layer) if isinstance(layer, (list, tuple)) else [layer]
        self.strands = strands
        self.copy_k = copy_k  # 0: no in-context copy detection
        self.nucleic = nucleic  # DNA/RNA: copies are also sought as reverse complements
        # dtype of the stored per-position distributions (schema.LETTER_DTYPES); None: none
        self.distributions = distributions if likelihood != "none" else None
        # None until measured (a CPU, no --batch-tokens): see :func:`measure_batch_tokens`
        self.batch_tokens = batch_tokens or DEFAULT_BATCH_TOKENS.get(model.device.type)
        self.batch_tokens_measured: dict[int, float] | None = None  # candidate -> tokens/s
        self.real_tokens = 0
        self.computed_tokens = 0
        # seq_id -> the BOS/CLS hidden state (one float16 vector per layer) of the window
        # starting each sequence scored by the last :meth:`score` (masked LMs with a BOS)
        self.bos_vectors: dict[str, list[np.ndarray]] = {}
        self.unscored: dict[str, int] = {}  # the last score(): unscored_reasons of its rows
        n_letters = len(self.tokenizer.scored_letters)
        # candidates of each token length -> one-hot (C, length * letters)
        self._candidates = {}
        for length, cand in self.tokenizer.candidates.items():
            onehot = torch.zeros(len(cand.token_ids), length, n_letters)
            onehot.scatter_(2, torch.from_numpy(cand.letter_at).unsqueeze(-1), 1.0)
            self._candidates[length] = (torch.from_numpy(cand.token_ids).to(model.device),
                                        onehot.reshape(len(cand.token_ids), -1).to(model.device))

    def batch_budget(self) -> int:
        """Padded tokens per forward pass: as given, the device's default, or measured on
        this machine for this model on rows of its context (at most 1,024 tokens) the first
        time it is needed (:func:`measure_batch_tokens`). It depends on the model and the
        machine only, never on which unit came first, so a unit is always packed into the
        same batches (and its values are the same bits) on this machine."""
        if self.batch_tokens is None:
            length = min(int(self.model.spec.context_tokens or 512), 1024)
            self.batch_tokens, self.batch_tokens_measured = measure_batch_tokens(
                self.model, self._candidates, length=length)
        return self.batch_tokens

    def _batches(self, rows: list[Row]) -> list[list[int]]:
        return pack_batches([r.length for r in rows], self.batch_budget())

    def score(self, jobs: list[WindowJob]) -> tuple[pa.Table, pa.Table | None]:
        """Positions rows (owned positions of every job, in job order) and token rows."""
        import torch

        spec = self.model.spec
        views: list[View] = []
        for j, job in enumerate(jobs):
            if job.scored:
                for reverse in ((False, True) if self.strands == "both" else (False,)):
                    views.append(make_view(self.tokenizer, job, j, reverse=reverse,
                                           context_tokens=spec.context_tokens))
        letters = self.tokenizer.n_standard if self.distributions else 0
        results = [_Result(v.owned_end - v.owned_start, letters) for v in views]
        unmasked_pass = self.embeddings or self.likelihood != "none"
        rows = plan_rows(self.tokenizer, views, mode=self.likelihood,
                         unmasked_pass=unmasked_pass, stride=self.fast_stride)
        with torch.inference_mode():
            for batch in self._batches(rows):
                self._run_batch([rows[i] for i in batch], views, results)
        self.bos_vectors = {jobs[v.job].seq_id: res.bos for v, res in zip(views, results)
                            if res.bos is not None}
        positions, tokens = self._tables(jobs, views, results)
        column = {"exact": "logp", "fast": "logp", "causal": "logp",
                  "unmasked": "logp_unmasked"}.get(self.likelihood)
        self.unscored = unscored_reasons(self.tokenizer, positions, column)
        return positions, tokens

    def rescore(self, tasks: list[RescoreTask]) -> list[np.ndarray]:
        """Masked logp of each :class:`~seqatlas.scoring.ablation.RescoreTask`'s bases, in
        this scorer's likelihood mode (exact or fast); all tasks batched together."""
        import torch

        if self.likelihood not in ("exact", "fast", "causal"):
            raise ModelError(f"rescoring needs --likelihood exact, fast or causal, not "
                             f"{self.likelihood}")
        views = [task_view(self.tokenizer, t, context_tokens=self.model.spec.context_tokens)
                 for t in tasks]
        results = [_Result(v.owned_end - v.owned_start) for v in views]
        rows = self._target_rows(views, tasks)
        with torch.inference_mode():
            for batch in self._batches(rows):
                self._run_batch([rows[i] for i in batch], views, results)
        return [res.logp[np.asarray(t.bases, dtype=np.int64) - view.owned_start]
                for t, view, res in zip(tasks, views, results)]

    def rescore_letters(self, tasks: list[RescoreTask]) -> list[np.ndarray]:
        """Each task's bases' distributions over the standard letters, ``(len(bases),
        letters)``, in this scorer's likelihood mode: the masked passes that mode plans at
        ingest (exact, fast) or the window's unmasked pass (unmasked); all tasks batched
        together. Tasks of a reverse strand are given in its own (reverse-complement) view."""
        import torch

        if self.likelihood == "none":
            raise ModelError(f"rescoring needs a likelihood mode, not {self.likelihood}")
        views = [task_view(self.tokenizer, t, context_tokens=self.model.spec.context_tokens)
                 for t in tasks]
        results = [_Result(v.owned_end - v.owned_start, self.tokenizer.n_standard)
                   for v in views]
        rows = self._target_rows(views, tasks)
        with torch.inference_mode():
            for batch in self._batches(rows):
                self._run_batch([rows[i] for i in batch], views, results)
        return [res.letters[np.asarray(t.bases, dtype=np.int64) - view.owned_start]
                for t, view, res in zip(tasks, views, results)]

    def _target_rows(self, views: list[View], tasks: list[RescoreTask]) -> list[Row]:
        """The passes reading out each task's bases: those of its mode for masked modes, the
        window's one pass for unmasked and causal."""
        if self.likelihood in ("exact", "fast"):
            return plan_target_rows(self.tokenizer, views, [t.bases for t in tasks],
                                    mode=self.likelihood, stride=self.fast_stride)
        rows = []
        for v, (view, task) in enumerate(zip(views, tasks)):
            if view.tokens.n_tokens and len(task.bases):
                if self.likelihood == "causal":
                    rows.append(causal_row(self.tokenizer, view, v, task.bases))
                else:
                    readout, pr, pb = _pairs(self.tokenizer, view, task.bases)
                    rows.append(Row(v, None, readout, pr, pb, len(view.tokens.ids)))
        return rows

    def _run_batch(self, rows: list[Row], views: list[View], results: list[_Result]) -> None:
        import torch

        device = self.model.device
        specials = self.tokenizer.specials
        width = max(r.length for r in rows)
        input_ids = torch.full((len(rows), width), specials.pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for b, row in enumerate(rows):
            view = views[row.view]
            input_ids[b, : row.length] = torch.from_numpy(view.tokens.ids)
            attention[b, : row.length] = 1
            if view.masked_always is not None:
                input_ids[b, torch.from_numpy(view.masked_always + view.tokens.prefix)] = \
                    specials.mask
            if row.masked is not None:
                input_ids[b, torch.from_numpy(row.masked + view.tokens.prefix)] = specials.mask
        self.real_tokens += sum(r.length for r in rows)
        self.computed_tokens += len(rows) * width
        embed = self.embeddings and any(r.masked is None for r in rows)
        last, layer_hidden = self.model.encode(input_ids.to(device), attention.to(device),
                                               self.layers if embed else None)
        if self.likelihood != "none":
            self._read_likelihoods(rows, views, results, last)
        if embed:
            for b, row in enumerate(rows):
                view = views[row.view]
                if row.masked is None and not view.reverse:
                    self._keep_embeddings(view, results[row.view],
                                          [hidden[b] for hidden in layer_hidden])

    def _read_likelihoods(self, rows, views, results, last) -> None:
        import torch

        device = last.device
        b_idx, t_idx, lengths = [], [], []
        pair_slot, pair_offset, pair_readout = [], [], []
        row_bases, true = [], []  # per row: the bases it scores (its slots, in order)
        n_slots = readout_base = 0
        for b, row in enumerate(rows):
            view = views[row.view]
            b_idx.append(np.full(len(row.readout), b))
            # causal: a token is predicted by the hidden state of the token before it
            t_idx.append(row.readout + view.tokens.prefix - int(self.causal))
            lengths.append(view.tokens.ends[row.readout] - view.tokens.starts[row.readout])
            bases, slot_of = np.unique(row.pair_base, return_inverse=True)
            pair_slot.append(slot_of + n_slots)
            row_bases.append(bases)
            true.append(view.letters[bases])
            n_slots += len(bases)
            pair_offset.append(row.pair_base - view.tokens.starts[row.readout[row.pair_readout]])
            pair_readout.append(row.pair_readout + readout_base)
            readout_base += len(row.readout)
        if not n_slots:
            return
        hidden = last[torch.from_numpy(np.concatenate(b_idx)).to(device),
                      torch.from_numpy(np.concatenate(t_idx)).to(device)]
        lengths = np.concatenate(lengths)
        n_letters = len(self.tokenizer.scored_letters)
        marginal = torch.full((len(lengths), int(lengths.max()), n_letters), float("nan"),
                              device=device)
        for length in np.unique(lengths):
            if int(length) not in self._candidates:
                continue  # no vocabulary token of this length: the base stays unscored
            ids, onehot = self._candidates[int(length)]
            which = np.nonzero(lengths == length)[0]
            block = len(which) if device.type != "cpu" else \
                max(64, HEAD_BLOCK_ELEMENTS // len(ids))
            for first in range(0, len(which), block):
                part = torch.from_numpy(which[first : first + block]).to(device)
                probs = torch.softmax(self.model.token_logits(hidden[part], ids), dim=-1)
                marginal[part, : int(length)] = (probs @ onehot).view(len(part), int(length),
                                                                     n_letters)
        pair_readout = torch.from_numpy(np.concatenate(pair_readout)).to(device)
        pair_offset = torch.from_numpy(np.concatenate(pair_offset)).to(device)
        pair_slot = torch.from_numpy(np.concatenate(pair_slot)).to(device)
        per_pair = marginal[pair_readout, pair_offset]
        sums = torch.zeros(n_slots, n_letters, device=device)
        sums.index_add_(0, pair_slot, per_pair)
        counts = torch.bincount(pair_slot, minlength=n_slots).unsqueeze(-1)
        true = torch.from_numpy(np.concatenate(true)).to(device)
        letter_lp = letter_logprobs(self.tokenizer, sums / counts, true)
        logp, entropy, rank = (t.cpu().numpy() for t in distribution_stats(letter_lp, true))
        keep = any(results[row.view].letters is not None for row in rows)
        letters = standard_distribution(letter_lp, self.tokenizer.n_standard, true).cpu().numpy() \
            if keep else None
        start = 0
        for row, bases in zip(rows, row_bases):
            res = results[row.view]
            at, here = bases - views[row.view].owned_start, slice(start, start + len(bases))
            start += len(bases)
            main = row.masked is not None or self.likelihood in ("unmasked", "causal")
            if main and res.letters is not None:
                res.letters[at] = letters[here]
            if row.masked is None and not self.causal:
                res.logp_unmasked[at] = logp[here]
                if self.likelihood == "unmasked":
                    res.entropy[at], res.rank[at] = entropy[here], rank[here]
            else:
                res.logp[at], res.entropy[at], res.rank[at] = logp[here], entropy[here], rank[here]

    def _keep_embeddings(self, view: View, res: _Result, hidden: list) -> None:
        """Float16 embeddings of the view's owned tokens, one array per layer."""
        import torch

        starts = view.tokens.starts
        owned = np.nonzero((starts >= view.owned_start) & (starts < view.owned_end))[0]
        res.embedding_tokens = owned
        index = torch.from_numpy(owned + view.tokens.prefix).to(hidden[0].device)
        res.embedding = [h[index].to(torch.float16).cpu().numpy() for h in hidden]
        if view.starts_sequence and view.tokens.prefix and not self.model.spec.causal:
            res.bos = [h[0].to(torch.float16).cpu().numpy() for h in hidden]

    def _tables(self, jobs, views, results) -> tuple[pa.Table, pa.Table | None]:
        by_job: dict[int, dict[bool, tuple[View, _Result]]] = {}
        for view, res in zip(views, results):
            by_job.setdefault(view.job, {})[view.reverse] = (view, res)
        copies = self._copies(jobs)
        token_schema = schema.tokens_schema(self.model.spec.hidden_size,
                                            extra_layers=self.layers[1:])
        columns_of_layers = [schema.layer_column(self.layers, layer) for layer in self.layers]
        positions_schema = schema.positions_schema(
            self.tokenizer.n_standard if self.distributions else None, self.distributions)
        tokens: dict[str, list] = {f.name: [] for f in token_schema}
        for j, job in enumerate(jobs):
            forward = by_job.get(j, {}).get(False)
            if self.embeddings and forward and forward[1].embedding is not None:
                _extend(tokens, _token_columns(self.tokenizer, job, forward[0], forward[1],
                                               columns_of_layers))
        columns = _position_columns(self.tokenizer, jobs, by_job, copies,
                                    distributions=bool(self.distributions))
        positions = pa.Table.from_arrays(
            [columns[f.name].cast(f.type) for f in positions_schema], schema=positions_schema)
        if not self.embeddings:
            return positions, None
        arrays = [pa.concat_arrays(tokens[f.name]) if tokens[f.name]
                  else pa.array([], f.type) for f in token_schema]
        return positions, pa.Table.from_arrays(arrays, schema=token_schema)

    def _copies(self, jobs: list[WindowJob]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Per scored job: the in-context copies of its owned positions, in its own window."""
        scored = [j for j, job in enumerate(jobs) if job.scored]
        if not self.copy_k or not scored:
            return {}
        owned = [(jobs[j].own_start - jobs[j].start, jobs[j].own_end - jobs[j].start)
                 for j in scored]
        offset, strand = window_copies([jobs[j].residues for j in scored], owned,
                                       k=self.copy_k, nucleic=self.nucleic)
        ends = np.cumsum([hi - lo for lo, hi in owned])
        return {j: (o, s) for j, o, s in zip(scored, np.split(offset, ends[:-1]),
                                             np.split(strand, ends[:-1]))}


def _extend(columns: dict[str, list], arrays: dict[str, pa.Array]) -> None:
    """Append one job's arrays to the per-column chunk lists."""
    for name, array in arrays.items():
        columns[name].append(array)


def _position_columns(tokenizer: TokenizerFamily, jobs: list[WindowJob], by_job: dict,
                      copies: dict, *, distributions: bool) -> dict[str, pa.Array]:
    """Every positions column over the owned positions of ``jobs``, in job order: each
    column built once from the jobs' arrays (a long N run, or a strand not scored, is null).
    """
    counts = np.array([job.own_end - job.own_start for job in jobs], dtype=np.int64)
    total = int(counts.sum())
    scored = np.repeat(np.array([job.scored for job in jobs], dtype=bool), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    owned = b"".join(job.residues[job.own_start - job.start : job.own_end - job.start]
                     for job in jobs)
    strands = [by_job.get(j, {}) for j in range(len(jobs))]

    def joined(strand: bool, attr: str, fill, dtype, reverse: bool = False) -> np.ndarray:
        parts = []
        for j, views in enumerate(strands):
            res = views[strand][1] if strand in views else None
            value = getattr(res, attr) if res is not None else None
            if value is None:
                shape = (counts[j],) if attr != "letters" else (counts[j], tokenizer.n_standard)
                parts.append(np.full(shape, fill, dtype=dtype))
            elif reverse:  # reverse-strand arrays run backwards along the window
                parts.append(value[::-1] if attr != "letters"
                             else forward_letters(tokenizer, value))
            else:
                parts.append(value)
        if parts:
            return np.concatenate(parts)
        return np.empty((0, tokenizer.n_standard) if attr == "letters" else 0, dtype=dtype)

    starts = np.repeat(np.array([job.start for job in jobs], dtype=np.int64), counts)
    ends = np.repeat(np.array([job.end for job in jobs], dtype=np.int64), counts)
    own = np.repeat(np.array([job.own_start for job in jobs], dtype=np.int64), counts)
    logp, unmasked = joined(False, "logp", np.nan, np.float32), \
        joined(False, "logp_unmasked", np.nan, np.float32)
    rank = joined(False, "rank", 0, np.int16)
    columns = {
        "seq_id": pa.array([job.seq_id for job in jobs], pa.string()).take(
            pa.array(np.repeat(np.arange(len(jobs)), counts))),
        "pos": pa.array(own + np.arange(total, dtype=np.int64) - first),
        "ref": _letters_array(owned.upper()), "soft_masked": pa.array(soft_mask(owned)),
        # a long N run: no window scored it
        "window_start": pa.array(starts, mask=~scored), "window_end": pa.array(ends, mask=~scored),
        "logp": _floats(logp), "logp_unmasked": _floats(unmasked),
        "entropy": _floats(joined(False, "entropy", np.nan, np.float32)),
        "rank": pa.array(rank, mask=rank == 0)}
    logp_rc = joined(True, "logp", np.nan, np.float32, reverse=True)
    unmasked_rc = joined(True, "logp_unmasked", np.nan, np.float32, reverse=True)
    columns.update({"logp_rc": _floats(logp_rc), "logp_unmasked_rc": _floats(unmasked_rc),
                    "logp_mean": _floats((logp + logp_rc) / 2),
                    "logp_unmasked_mean": _floats((unmasked + unmasked_rc) / 2)})
    offset, strand = np.zeros(total, dtype=np.int64), np.zeros(total, dtype=np.int8)
    job_first = np.cumsum(counts) - counts
    for j, (found_offset, found_strand) in copies.items():  # off, or not scored: null
        at = slice(int(job_first[j]), int(job_first[j] + counts[j]))
        offset[at], strand[at] = found_offset, found_strand
    columns["copy_offset"], columns["copy_strand"] = copy_columns(offset, strand)
    if distributions:
        columns[schema.LETTER_COLUMNS[0]] = letters_array(
            joined(False, "letters", np.nan, np.float32))
        columns[schema.LETTER_COLUMNS[1]] = letters_array(
            joined(True, "letters", np.nan, np.float32, reverse=True))
    return columns


def complement_order(tokenizer: TokenizerFamily) -> np.ndarray:
    """For each standard letter k, the index of its complement (DNA/RNA): a reverse-strand
    distribution indexed by the complement letters, re-indexed onto the forward strand."""
    pairs = {"A": "TU", "C": "G", "G": "C", "T": "A", "U": "A"}
    letters = tokenizer.letters
    return np.array([next(letters.index(c) for c in pairs[x] if c in letters)
                     for x in letters], dtype=np.int64)


def forward_letters(tokenizer: TokenizerFamily, reverse: np.ndarray) -> np.ndarray:
    """A reverse view's (n, letters) distributions, in view order, as forward-strand rows in
    forward order: row i of the result is forward base i, column k its forward letter k."""
    return reverse[::-1][:, complement_order(tokenizer)]


def letters_array(values: np.ndarray) -> pa.Array:
    """(n, letters) log-probabilities as a fixed-size list column; NaN rows are null."""
    missing = np.isnan(values).all(axis=1) if values.size else np.ones(len(values), bool)
    # a letter no token can spell keeps log p = -inf (never a large finite number)
    flat = pa.array(np.where(np.isnan(values), 0.0, values).reshape(-1).astype(np.float32))
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[1], mask=pa.array(missing))


def _token_columns(tokenizer: TokenizerFamily, job: WindowJob, view: View, res: _Result,
                   layer_columns: list[str]) -> dict[str, pa.Array]:
    """Token rows of the forward view's owned tokens, one embedding column per layer."""
    t = res.embedding_tokens
    start = view.tokens.starts[t] + job.start
    columns = {"token_id": pa.array(start + job.token_offset),
               "seq_id": pa.array([job.seq_id] * len(t), pa.string()),
               "start": pa.array(start),
               "end": pa.array(view.tokens.ends[t] + job.start),
               "token": pa.array(tokenizer.token_texts(view.tokens.ids[t + view.tokens.prefix]),
                                 pa.string())}
    for name, values in zip(layer_columns, res.embedding):
        flat = pa.array(values.reshape(-1), pa.float16())
        columns[name] = pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
    return columns


def _floats(values: np.ndarray) -> pa.Array:
    return pa.array(values.astype(np.float32), from_pandas=True)


def _letters_array(upper: bytes) -> pa.Array:
    """One-letter strings from bytes without a Python object per letter."""
    offsets = np.arange(len(upper) + 1, dtype=np.int32)
    return pa.StringArray.from_buffers(len(upper), pa.py_buffer(offsets.tobytes()),
                                       pa.py_buffer(upper))
