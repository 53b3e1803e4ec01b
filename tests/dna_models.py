"""Tiny random DNA checkpoints of every tokenizer family, saved with save_pretrained."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _bert(directory: Path, vocab_size: int, *, context_tokens: int, seed: int, **extra) -> None:
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64,
                        max_position_embeddings=context_tokens, pad_token_id=0, **extra)
    BertForMaskedLM(config).save_pretrained(directory)


def make_overlapping(directory: Path, k: int = 3, *, context_tokens: int = 24) -> Path:
    """DNABERT-style: all 4^k k-mers, deliberately not in lexicographic order."""
    directory.mkdir(parents=True, exist_ok=True)
    kmers = ["".join(p) for p in itertools.product("ACGT", repeat=k)]
    random.Random(k).shuffle(kmers)
    (directory / "vocab.txt").write_text("\n".join(SPECIALS + kmers) + "\n")
    _bert(directory, len(SPECIALS) + len(kmers), context_tokens=context_tokens, seed=10 + k)
    return directory


def make_nonoverlapping(directory: Path, k: int = 3, *, context_tokens: int = 16) -> Path:
    """Nucleotide-Transformer-style: k-mers plus single-base fallback tokens."""
    directory.mkdir(parents=True, exist_ok=True)
    kmers = ["".join(p) for p in itertools.product("ACGT", repeat=k)]
    vocab = SPECIALS + kmers + list("ACGTN")
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    _bert(directory, len(vocab), context_tokens=context_tokens, seed=20 + k)
    return directory


def make_single(directory: Path, *, context_tokens: int = 20) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    vocab = SPECIALS + list("ACGTN")
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    _bert(directory, len(vocab), context_tokens=context_tokens, seed=30)
    return directory


def make_bpe(directory: Path, *, context_tokens: int = 32, vocab_size: int = 40) -> Path:
    """DNABERT-2-style: a BPE tokenizer.json trained on random DNA."""
    from tokenizers import Tokenizer, models, trainers

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=list("ACGTN"), show_progress=False)
    rng = random.Random(5)
    corpus = ["".join(rng.choice("AACGTTAC") for _ in range(200)) for _ in range(50)]
    tokenizer.train_from_iterator(corpus, trainer)
    tokenizer.save(str(directory / "tokenizer.json"))
    _bert(directory, tokenizer.get_vocab_size(), context_tokens=context_tokens, seed=40)
    return directory
