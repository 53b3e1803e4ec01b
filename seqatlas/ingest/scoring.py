"""Scoring windows with a masked LM: pure tensor functions plus a :class:`Scorer`.

A *row* is one forward pass of one window with some positions masked (or none). Rows
from many windows and sequences are packed into batches by a token budget after sorting
by length, so equal-length rows share a batch and padding stays rare. The MLM head runs
only on the hidden states it is needed for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from seqatlas import schema

LIKELIHOOD_MODES = ("exact", "fast", "unmasked", "none")
FAST_STRIDE = 7  # mask every 7th position per pass: 1/7 = 14.3%, about BERT's 15% rate


@dataclass(frozen=True)
class WindowJob:
    """One window of one sequence, with the positions it owns."""

    seq_id: str
    token_offset: int  # token_id of the sequence's first token
    start: int
    end: int
    own_start: int
    own_end: int
    residues: bytes  # the window's residues, original case

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Row:
    job: int  # index into the unit's jobs
    masked: np.ndarray | None  # window-local positions masked in this pass; None = unmasked pass
    length: int  # tokens, special tokens included


def mask_groups(job: WindowJob, mode: str, stride: int = FAST_STRIDE) -> list[np.ndarray]:
    """Window-local positions masked together in each pass for ``mode``."""
    owned = np.arange(job.own_start - job.start, job.own_end - job.start)
    if mode == "exact":
        return [owned[i : i + 1] for i in range(len(owned))]
    if mode == "fast":
        groups = [owned[owned % stride == r] for r in range(stride)]
        return [g for g in groups if len(g)]
    return []


def plan_rows(jobs: list[WindowJob], *, mode: str, unmasked_pass: bool, n_special: int,
              stride: int = FAST_STRIDE) -> list[Row]:
    rows = []
    for j, job in enumerate(jobs):
        length = job.length + n_special
        if unmasked_pass:
            rows.append(Row(j, None, length))
        rows.extend(Row(j, group, length) for group in mask_groups(job, mode, stride))
    return rows


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


def distribution_stats(letter_logits, true_letter):
    """log p(true letter), entropy (nats) and 1-based rank from letter logits.

    ``true_letter`` is -1 where the model has no such letter: logp and rank are NaN / 0.
    """
    import torch

    logp_all = torch.log_softmax(letter_logits, dim=-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    known = true_letter >= 0
    index = true_letter.clamp(min=0).unsqueeze(-1)
    logp = logp_all.gather(-1, index).squeeze(-1)
    rank = (logp_all > logp.unsqueeze(-1)).sum(-1) + 1
    logp = torch.where(known, logp, torch.full_like(logp, float("nan")))
    rank = torch.where(known, rank, torch.zeros_like(rank))
    return logp, entropy, rank


@dataclass
class _WindowResult:
    logp: np.ndarray
    logp_unmasked: np.ndarray
    entropy: np.ndarray
    rank: np.ndarray
    embedding: np.ndarray | None


class Scorer:
    """Scores lists of :class:`WindowJob` with one loaded model."""

    def __init__(self, model, *, likelihood: str, embeddings: bool, layer: int,
                 batch_tokens: int, stride: int = FAST_STRIDE):
        self.model = model
        self.tokenizer = model.spec.tokenizer()
        self.likelihood = likelihood
        self.embeddings = embeddings
        self.layer = layer
        self.batch_tokens = batch_tokens
        self.stride = stride
        self.real_tokens = 0
        self.computed_tokens = 0

    def score(self, jobs: list[WindowJob]) -> tuple[pa.Table, pa.Table | None]:
        """Positions rows (owned positions of every job, in job order) and token rows."""
        import torch

        tok = self.tokenizer
        prefix = len(tok.specials.prefix)
        ids = [tok.encode(job.residues) for job in jobs]
        letters = [tok.letter_index(job.residues) for job in jobs]
        results = [self._empty_result(job) for job in jobs]
        unmasked_pass = self.embeddings or self.likelihood != "none"
        rows = plan_rows(jobs, mode=self.likelihood, unmasked_pass=unmasked_pass,
                         n_special=tok.n_special, stride=self.stride)
        letter_ids = torch.as_tensor(tok.letter_ids, device=self.model.device)
        with torch.inference_mode():
            for batch in pack_batches([r.length for r in rows], self.batch_tokens):
                self._run_batch([rows[i] for i in batch], jobs, ids, letters, results,
                                prefix, letter_ids)
        return self._tables(jobs, results)

    def _empty_result(self, job: WindowJob) -> _WindowResult:
        n = job.own_end - job.own_start
        nan = np.full(n, np.nan, dtype=np.float32)
        return _WindowResult(nan.copy(), nan.copy(), nan.copy(), np.zeros(n, dtype=np.int16),
                             None)

    def _run_batch(self, rows, jobs, ids, letters, results, prefix, letter_ids):
        import torch

        device = self.model.device
        width = max(r.length for r in rows)
        input_ids = torch.full((len(rows), width), self.tokenizer.specials.pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        mask_rows, mask_cols, mask_slots = [], [], []
        for b, row in enumerate(rows):
            input_ids[b, : row.length] = torch.from_numpy(ids[row.job])
            attention[b, : row.length] = 1
            if row.masked is not None:
                mask_rows.append(np.full(len(row.masked), b))
                mask_cols.append(row.masked + prefix)
                mask_slots.append((row.job, row.masked))
        self.real_tokens += sum(r.length for r in rows)
        self.computed_tokens += len(rows) * width
        if mask_rows:
            r_idx = torch.from_numpy(np.concatenate(mask_rows))
            c_idx = torch.from_numpy(np.concatenate(mask_cols))
            input_ids[r_idx, c_idx] = self.tokenizer.specials.mask
        unmasked = [b for b, row in enumerate(rows) if row.masked is None]
        want_layer = self.layer if (self.embeddings and unmasked) else None
        last, layer_hidden = self.model.encode(input_ids.to(device), attention.to(device),
                                               want_layer)
        if mask_rows:
            logits = self.model.letter_logits(last[r_idx.to(device), c_idx.to(device)], letter_ids)
            true = torch.from_numpy(np.concatenate(
                [letters[j][local] for j, local in mask_slots])).to(device)
            logp, entropy, rank = (t.cpu().numpy() for t in distribution_stats(logits, true))
            offset = 0
            for j, local in mask_slots:
                own = local - (jobs[j].own_start - jobs[j].start)
                n = len(local)
                res = results[j]
                res.logp[own] = logp[offset : offset + n]
                res.entropy[own] = entropy[offset : offset + n]
                res.rank[own] = rank[offset : offset + n]
                offset += n
        for b in unmasked:
            self._unmasked_row(rows[b], jobs, letters, results, prefix, last[b], layer_hidden,
                               b, letter_ids)

    def _unmasked_row(self, row, jobs, letters, results, prefix, last_b, layer_hidden, b,
                      letter_ids):
        import torch

        job = jobs[row.job]
        lo = job.own_start - job.start + prefix
        hi = job.own_end - job.start + prefix
        res = results[row.job]
        if self.likelihood != "none":
            logits = self.model.letter_logits(last_b[lo:hi], letter_ids)
            true = torch.from_numpy(letters[row.job][lo - prefix : hi - prefix]).to(logits.device)
            logp, entropy, rank = (t.cpu().numpy() for t in distribution_stats(logits, true))
            res.logp_unmasked[:] = logp
            if self.likelihood == "unmasked":
                res.entropy[:] = entropy
                res.rank[:] = rank
        if self.embeddings:
            res.embedding = layer_hidden[b, lo:hi].to(torch.float16).cpu().numpy()

    def _tables(self, jobs, results) -> tuple[pa.Table, pa.Table | None]:
        columns: dict[str, list] = {name: [] for name in schema.POSITIONS.names}
        token_cols: dict[str, list] = {"token_id": [], "seq_id": [], "start": [], "end": [],
                                       "token": [], "embedding": []}
        for job, res in zip(jobs, results):
            n = job.own_end - job.own_start
            local = slice(job.own_start - job.start, job.own_end - job.start)
            owned = job.residues[local]
            pos = np.arange(job.own_start, job.own_end, dtype=np.int64)
            columns["seq_id"].append(pa.array([job.seq_id] * n, pa.string()))
            columns["pos"].append(pa.array(pos))
            columns["ref"].append(_letters_array(owned.upper()))
            columns["soft_masked"].append(pa.array(np.frombuffer(owned, np.uint8) >= ord("a")))
            columns["logp"].append(pa.array(res.logp, from_pandas=True))
            columns["logp_unmasked"].append(pa.array(res.logp_unmasked, from_pandas=True))
            columns["entropy"].append(pa.array(res.entropy, from_pandas=True))
            columns["rank"].append(pa.array(res.rank, mask=res.rank == 0))
            columns["window_start"].append(pa.array(np.full(n, job.start, dtype=np.int64)))
            columns["window_end"].append(pa.array(np.full(n, job.end, dtype=np.int64)))
            if self.embeddings:
                token_cols["token_id"].append(pa.array(pos + job.token_offset))
                token_cols["seq_id"].append(pa.array([job.seq_id] * n, pa.string()))
                token_cols["start"].append(pa.array(pos))
                token_cols["end"].append(pa.array(pos + 1))
                token_cols["token"].append(pa.array(self.tokenizer.token_texts(owned), pa.string()))
                flat = pa.array(res.embedding.reshape(-1), pa.float16())
                token_cols["embedding"].append(
                    pa.FixedSizeListArray.from_arrays(flat, res.embedding.shape[1]))
        positions = pa.Table.from_arrays(
            [pa.concat_arrays(columns[f.name]).cast(f.type) for f in schema.POSITIONS],
            schema=schema.POSITIONS)
        if not self.embeddings:
            return positions, None
        token_schema = schema.tokens_schema(self.model.spec.hidden_size)
        tokens = pa.Table.from_arrays(
            [pa.concat_arrays(token_cols[f.name]) for f in token_schema], schema=token_schema)
        return positions, tokens


def _letters_array(upper: bytes) -> pa.Array:
    """One-letter strings from bytes without a Python object per letter."""
    offsets = np.arange(len(upper) + 1, dtype=np.int32)
    return pa.StringArray.from_buffers(len(upper), pa.py_buffer(offsets.tobytes()),
                                       pa.py_buffer(upper))
