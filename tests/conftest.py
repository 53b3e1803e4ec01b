"""Shared fixtures: tiny random checkpoints saved with save_pretrained, FASTA writers, Ray."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def sigint_delivered():
    """Python's own SIGINT handler for a test that simulates Ctrl-C. A shell that starts the
    suite in the background (``nohup ... &``) ignores SIGINT, and then neither
    ``_thread.interrupt_main()`` nor ``kill(SIGINT)`` reaches the test: it would wait forever."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def sigint_default() -> None:
    """``preexec_fn`` of a child that a test sends SIGINT: the default disposition, so the
    child's Python installs its KeyboardInterrupt handler even when this process ignores it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)

ESM_VOCAB = ["<cls>", "<pad>", "<eos>", "<unk>", *"LAGVSERTIDPKQNFYMHWCXBUZO", ".", "-",
             "<null_1>", "<mask>"]
BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"ACDEFGHIKLMNPQRSTVWY"]
AMINO = "ACDEFGHIKLMNPQRSTVWY"


def make_esm(directory: Path, *, context_tokens: int = 34, hidden: int = 32, layers: int = 2,
             seed: int = 0) -> Path:
    """A tiny random ESM-2-style checkpoint (rotary positions, <cls> x <eos>)."""
    import torch
    from transformers import EsmConfig, EsmForMaskedLM, EsmTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(ESM_VOCAB) + "\n")
    torch.manual_seed(seed)
    config = EsmConfig(vocab_size=len(ESM_VOCAB), hidden_size=hidden, num_hidden_layers=layers,
                       num_attention_heads=4, intermediate_size=2 * hidden,
                       max_position_embeddings=context_tokens + 2, pad_token_id=1,
                       mask_token_id=ESM_VOCAB.index("<mask>"),
                       position_embedding_type="rotary", token_dropout=False,
                       emb_layer_norm_before=False)
    EsmForMaskedLM(config).save_pretrained(directory)
    EsmTokenizer(str(directory / "vocab.txt")).save_pretrained(directory)
    return directory


def make_bert(directory: Path, *, context_tokens: int = 40, hidden: int = 32, seed: int = 1
              ) -> Path:
    """A tiny random BERT MLM with AntiBERTy's vocabulary layout ([CLS] x [SEP])."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(BERT_VOCAB) + "\n")
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(BERT_VOCAB), hidden_size=hidden, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=2 * hidden,
                        max_position_embeddings=context_tokens, pad_token_id=0)
    BertForMaskedLM(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session", autouse=True)
def _seqatlas_cache(tmp_path_factory):
    """This test run's weights-hash cache (seqatlas.checkpoints.digests), not the user's;
    subprocesses inherit it."""
    previous = os.environ.get("SEQATLAS_CACHE_DIR")
    os.environ["SEQATLAS_CACHE_DIR"] = str(tmp_path_factory.mktemp("seqatlas_cache"))
    yield
    if previous is None:
        os.environ.pop("SEQATLAS_CACHE_DIR", None)
    else:
        os.environ["SEQATLAS_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def tiny_esm(tmp_path_factory) -> Path:
    return make_esm(tmp_path_factory.mktemp("models") / "tiny_esm")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_bert(tmp_path_factory.mktemp("models") / "tiny_bert")


def random_protein(length: int, seed: int) -> str:
    import random

    rng = random.Random(seed)
    return "".join(rng.choice(AMINO) for _ in range(length))


def write_fasta(path: Path, records: dict[str, str], width: int = 60) -> Path:
    with open(path, "w") as fh:
        for name, seq in records.items():
            fh.write(f">{name}\n")
            for i in range(0, len(seq), width):
                fh.write(seq[i : i + width] + "\n")
    return path


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test run; ingest reuses it and leaves it running."""
    import logging

    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR)
    yield ray
    ray.shutdown()
