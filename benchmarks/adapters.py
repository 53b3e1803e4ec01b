"""Benchmark: exact ingest through each model adapter vs the package's own model, and the cost
of causal vs masked likelihoods, on small random checkpoints (2-core CPU).

1. Per adapter (transformers ESM-2, fair-esm ESM-2, CARP and ESM C on proteins, GPN on DNA):
   positions/s of ``seqatlas.ingest(..., likelihood="exact", embeddings=False, workers=0)``
   (the whole call: model resolved, hashed and loaded, Parquet committed) against the naive
   pseudo-log-likelihood loop a user would write with the package itself: for each window
   (the ones the atlas scored: one per protein, 512-base ones for GPN's convolutional
   model), every owned position masked with the package's mask token, the masked copies of
   one window run through the package's own forward in batches of ``--chunk`` (32) under
   ``torch.inference_mode()``, log_softmax over the kind's letters' logits (20 amino acids,
   ACGT). Its model loading is not timed. The ratio seqatlas/direct (target >= 1) and the
   agreement of the two (mean logp of each, max abs difference per position).
2. Causal vs masked: a GPT-2 and a BERT of one shape (hidden, layers, heads, FFN; vocabulary
   ACGT plus their special tokens) ingest the same random DNA in the same windows:
   ``likelihood="causal"`` (GPT-2) vs ``"exact"`` and ``"fast"`` (BERT); seconds,
   positions/s, and the cost ratios exact/causal and fast/causal.

Each adapter (and part 2) runs on its own: one that fails prints its error and the rest go
on. ESM C needs EvolutionaryScale's ``esm`` (``esm.models.esmc``), which conflicts with
fair-esm's ``esm``: skipped with the reason when it cannot be imported.

Usage: python benchmarks/adapters.py [--quick] [--proteins 20] [--min-length 100]
       [--max-length 300] [--dna-kb 3] [--causal-kb 20] [--window 256] [--chunk 32]
       [--threads N] [--repeat 1] [--only NAME ...] [--skip-causal] [--workdir DIR]
(``--quick``: about a minute; the full run about 3-4 minutes on 2 cores.)
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import traceback
import warnings
from argparse import Namespace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests' builders (tests.conftest, tests.test_adapter_gpn)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

AMINO = "ACDEFGHIKLMNPQRSTVWY"
DNA = "ACGT"
# one shape for the transformer models of part 1 and (DNA) part 2
HIDDEN, LAYERS, HEADS = 64, 2, 4
GPN_LAYERS = 4  # gpn's ConvNet: hidden HIDDEN, kernel 9, dilations up to 8


# ---------------------------------------------------------------------------------------
# inputs


def random_seq(letters: str, length: int, rng: random.Random) -> str:
    return "".join(rng.choice(letters) for _ in range(length))


def write_fasta(path: Path, records: dict[str, str], width: int = 60) -> Path:
    with open(path, "w") as fh:
        for name, seq in records.items():
            fh.write(f">{name}\n")
            for i in range(0, len(seq), width):
                fh.write(seq[i : i + width] + "\n")
    return path


# ---------------------------------------------------------------------------------------
# checkpoints (a bit bigger than the tests' ones) and each package's own model


class Direct:
    """The package's own model as a user drives it: ``tokens(window)`` (1-D ids, the
    residues from ``offset`` on), ``mask`` id, ``letter_ids`` (the kind's letters in order),
    ``logits(batch)`` (batch, tokens, vocabulary)."""

    offset = 0
    mask: int
    letter_ids: object

    def tokens(self, window: str):
        raise NotImplementedError

    def logits(self, batch):
        raise NotImplementedError


def build_transformers_esm(directory: Path) -> Path:
    from tests.conftest import make_esm

    # the tests' ESM-2 (rotary positions, <cls> x <eos>), with a context for 300 residues
    return make_esm(directory, context_tokens=1024, hidden=HIDDEN, layers=LAYERS, seed=0)


class DirectTransformersEsm(Direct):
    offset = 1  # <cls>

    def __init__(self, path: Path):
        import torch
        from transformers import EsmForMaskedLM, EsmTokenizer

        self.model = EsmForMaskedLM.from_pretrained(path).eval()
        self.tok = EsmTokenizer.from_pretrained(path)
        self.mask = self.tok.mask_token_id
        self.letter_ids = torch.tensor(self.tok.convert_tokens_to_ids(list(AMINO)))

    def tokens(self, window: str):
        import torch

        return torch.tensor(self.tok(window)["input_ids"])

    def logits(self, batch):
        return self.model(input_ids=batch).logits


def build_fair_esm(directory: Path) -> Path:
    """An ESM-2 of fair-esm's own class, saved as torch hub caches the real ones."""
    import esm
    import torch
    from esm.model.esm2 import ESM2

    torch.manual_seed(1)
    model = ESM2(num_layers=LAYERS, embed_dim=HIDDEN, attention_heads=HEADS,
                 alphabet=esm.Alphabet.from_architecture("ESM-1b"), token_dropout=True)
    with torch.no_grad():  # away from the initial layer norms; peaked predictions
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.embed_tokens.weight.mul_(0.2)
    cfg = {"model": Namespace(_name="ESM2", encoder_layers=LAYERS, encoder_embed_dim=HIDDEN,
                              encoder_ffn_embed_dim=4 * HIDDEN,
                              encoder_attention_heads=HEADS, token_dropout=True,
                              max_positions=1024)}
    state = {("encoder." if k.startswith("lm_head.") else "encoder.sentence_encoder.") + k:
             v.clone() for k, v in model.state_dict().items()
             if not k.startswith("contact_head.")}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"esm2_t{LAYERS}_bench_UR50D.pt"
    torch.save({"model": state, "cfg": cfg}, path)
    torch.save({"model": {"contact_head.regression.weight": torch.randn(1, LAYERS * HEADS),
                          "contact_head.regression.bias": torch.zeros(1)}},
               str(path.with_suffix("")) + "-contact-regression.pt")
    return path


class DirectFairEsm(Direct):
    offset = 1  # <cls>

    def __init__(self, path: Path):
        import esm.pretrained
        import torch

        # torch >= 2.6 loads with weights_only: fair-esm's checkpoints hold a Namespace
        with torch.serialization.safe_globals([Namespace]):
            self.model, self.alphabet = esm.pretrained.load_model_and_alphabet_local(str(path))
        self.model.eval()
        self.convert = self.alphabet.get_batch_converter()
        self.mask = self.alphabet.mask_idx
        self.letter_ids = torch.tensor([self.alphabet.get_idx(a) for a in AMINO])

    def tokens(self, window: str):
        return self.convert([("x", window)])[2][0]

    def logits(self, batch):
        return self.model(batch)["logits"]


CARP_ARCHITECTURE = {"d_embed": 32, "d_model": HIDDEN, "n_layers": 4, "kernel_size": 5,
                     "r": 16, "activation": "gelu", "slim": True}


def build_carp(directory: Path) -> Path:
    """A CARP (ByteNetLM) built as sequence_models.pretrained.load_carp builds one, saved in
    the layout of the downloaded files."""
    import torch
    from sequence_models.constants import MASK, PROTEIN_ALPHABET
    from sequence_models.convolutional import ByteNetLM

    a = CARP_ARCHITECTURE
    torch.manual_seed(2)
    model = ByteNetLM(len(PROTEIN_ALPHABET), a["d_embed"], a["d_model"], a["n_layers"],
                      a["kernel_size"], a["r"], dropout=0.0, activation=a["activation"],
                      causal=False, padding_idx=PROTEIN_ALPHABET.index(MASK), final_ln=True,
                      slim=a["slim"])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
        model.decoder.conv.weight.mul_(4.0)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "carp_bench.pt"
    torch.save({"model": "carp_bench", **a, "model_state_dict": model.state_dict()}, path)
    return path


class DirectCarp(Direct):
    def __init__(self, path: Path):
        import torch
        from sequence_models.constants import MASK, PROTEIN_ALPHABET
        from sequence_models.pretrained import load_model_and_alphabet

        self.model, self.collater = load_model_and_alphabet(str(path))
        self.model.eval()
        self.mask = PROTEIN_ALPHABET.index(MASK)
        self.letter_ids = torch.tensor([PROTEIN_ALPHABET.index(a) for a in AMINO])

    def tokens(self, window: str):
        return self.collater([(window,)])[0][0]

    def logits(self, batch):
        # the package's CARP wrapper (it masks padding itself)
        return self.model(batch, repr_layers=[], logits=True)["logits"]


def build_gpn(directory: Path) -> Path:
    """gpn's legacy ConvNet masked LM (the layout of songlab/gpn-brassicacea) with the
    tokenizer GPN's checkpoints ship."""
    import torch
    from gpn.legacy import ConvNetConfig, ConvNetForMaskedLM

    from tests.test_adapter_gpn import write_gpn_tokenizer

    torch.manual_seed(3)
    model = ConvNetForMaskedLM(ConvNetConfig(n_layers=GPN_LAYERS, hidden_size=HIDDEN,
                                             kernel_size=9, dilation_max=8))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    write_gpn_tokenizer(directory)
    return directory


class DirectGpn(Direct):
    def __init__(self, path: Path):
        import gpn
        import torch
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        gpn.register_auto_classes("gpn")
        self.model = AutoModelForMaskedLM.from_pretrained(path).eval()
        self.tok = AutoTokenizer.from_pretrained(path)
        self.mask = self.tok.mask_token_id
        self.letter_ids = torch.tensor(self.tok.convert_tokens_to_ids(list("acgt")))

    def tokens(self, window: str):
        import torch

        return torch.tensor(self.tok(window, add_special_tokens=False)["input_ids"])

    def logits(self, batch):
        return self.model(input_ids=batch).logits


def build_esmc(directory: Path) -> Path:
    """An ESM C of EvolutionaryScale's own class, its state dict stored as esm.pretrained's
    download stores it (only run where ``esm.models.esmc`` imports)."""
    import torch
    from esm.models.esmc import ESMC
    from esm.tokenization import get_esmc_model_tokenizers

    torch.manual_seed(6)
    model = ESMC(d_model=HIDDEN, n_heads=HEADS, n_layers=LAYERS,
                 tokenizer=get_esmc_model_tokenizers(), use_flash_attn=False).eval()
    path = directory / "data" / "weights" / "esmc_bench_2024_12_v0.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return directory


class DirectEsmc(Direct):
    offset = 1  # <cls>

    def __init__(self, directory: Path):
        import torch
        from esm.models.esmc import ESMC
        from esm.tokenization import get_esmc_model_tokenizers

        self.tok = get_esmc_model_tokenizers()
        self.model = ESMC(d_model=HIDDEN, n_heads=HEADS, n_layers=LAYERS, tokenizer=self.tok,
                          use_flash_attn=False).eval()
        path = directory / "data" / "weights" / "esmc_bench_2024_12_v0.pth"
        self.model.load_state_dict(torch.load(path, map_location="cpu"))
        self.mask = self.tok.mask_token_id
        self.letter_ids = torch.tensor([self.tok.convert_tokens_to_ids(a) for a in AMINO])

    def tokens(self, window: str):
        from esm.utils import encoding

        return encoding.tokenize_sequence(window, self.tok, add_special_tokens=True)

    def logits(self, batch):
        return self.model(sequence_tokens=batch).sequence_logits


def esmc_unavailable() -> str | None:
    try:
        import esm.models.esmc  # noqa: F401
    except Exception as exc:
        return (f"EvolutionaryScale's esm is not importable ({type(exc).__name__}: {exc}); "
                "it conflicts with fair-esm's esm package")
    return None


def gpn_unavailable() -> str | None:
    try:
        import gpn.legacy  # noqa: F401

        import seqatlas.checkpoints.gpn  # noqa: F401
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def fair_esm_unavailable() -> str | None:
    try:
        from esm.model.esm2 import ESM2  # noqa: F401
    except Exception as exc:
        return f"fair-esm not importable ({type(exc).__name__}: {exc})"
    return None


def carp_unavailable() -> str | None:
    try:
        import sequence_models.pretrained  # noqa: F401
    except Exception as exc:
        return f"sequence-models not importable ({type(exc).__name__}: {exc})"
    return None


# name: (adapter, kind, builder, direct class, why it cannot run)
CASES = {
    "transformers": ("transformers", "protein", build_transformers_esm, DirectTransformersEsm,
                     lambda: None),
    "fair-esm": ("fair-esm", "protein", build_fair_esm, DirectFairEsm, fair_esm_unavailable),
    "carp": ("carp", "protein", build_carp, DirectCarp, carp_unavailable),
    "esmc": ("esmc", "protein", build_esmc, DirectEsmc, esmc_unavailable),
    "gpn": ("gpn", "dna", build_gpn, DirectGpn, gpn_unavailable),
}


# ---------------------------------------------------------------------------------------
# part 1


def atlas_windows(atlas: Path):
    """{(seq_id, window_start, window_end): (positions, logp)} of the atlas, sorted by pos."""
    import seqatlas

    table = seqatlas.Atlas(atlas).positions(
        columns=["seq_id", "pos", "window_start", "window_end", "logp"]).to_pydict()
    windows: dict = {}
    for seq_id, pos, start, end, logp in zip(table["seq_id"], table["pos"],
                                             table["window_start"], table["window_end"],
                                             table["logp"]):
        windows.setdefault((seq_id, start, end), []).append((pos, logp))
    return {k: (np.array([p for p, _ in sorted(v)]), np.array([x for _, x in sorted(v)]))
            for k, v in windows.items()}


def direct_pll(direct: Direct, records: dict[str, str], windows, letters: str, chunk: int):
    """The naive PLL loop: every owned position of each window masked in turn, ``chunk``
    masked copies per forward; log p(true letter) among ``letters``."""
    import torch

    out = {}
    index = {c: i for i, c in enumerate(letters)}
    with torch.inference_mode():
        for (seq_id, start, end), (positions, _) in windows.items():
            window = records[seq_id][start:end]
            ids = direct.tokens(window)
            where = torch.from_numpy(positions - start) + direct.offset
            true = torch.tensor([index[window[p - start]] for p in positions])
            logp = []
            for k in range(0, len(where), chunk):
                at = where[k : k + chunk]
                batch = ids.repeat(len(at), 1)
                rows = torch.arange(len(at))
                batch[rows, at] = direct.mask
                logits = direct.logits(batch)[rows, at][:, direct.letter_ids]
                lp = torch.log_softmax(logits.float(), dim=-1)
                logp.append(lp[rows, true[k : k + chunk]])
            out[(seq_id, start, end)] = torch.cat(logp).numpy()
    return out


def run_adapter(name: str, args, work: Path, inputs: dict) -> dict:
    import torch

    import seqatlas

    adapter, kind, build, direct_class, unavailable = CASES[name]
    why = unavailable()
    if why:
        return {"skipped": why}
    model = build(work / "models" / name)
    records, fasta = inputs[kind]
    positions = sum(map(len, records.values()))
    t_ingest, t_scoring, t_direct = [], [], []
    direct = None
    for k in range(args.repeat):  # alternating, each side's best run is kept
        atlas = work / f"atlas_{name}_{k}"  # a fresh atlas: a re-run would skip the work
        t0 = time.perf_counter()
        report = seqatlas.ingest(fasta, atlas=atlas, model=str(model), adapter=adapter,
                                 kind=kind, likelihood="exact", embeddings=False, workers=0,
                                 progress=False)
        t_ingest.append(time.perf_counter() - t0)
        t_scoring.append(report.seconds)
        if direct is None:
            windows = atlas_windows(atlas)
            scored = sum(len(p) for p, _ in windows.values())
            direct = direct_class(model)  # loading untimed
        t0 = time.perf_counter()
        mine = direct_pll(direct, records, windows, DNA if kind == "dna" else AMINO,
                          args.chunk)
        t_direct.append(time.perf_counter() - t0)
    best = int(np.argmin(t_ingest))
    t_ingest, t_scoring, t_direct = t_ingest[best], t_scoring[best], min(t_direct)
    ours = np.concatenate([windows[k][1] for k in windows])
    theirs = np.concatenate([mine[k] for k in windows])
    params = sum(p.numel() for p in getattr(direct, "model").parameters())
    return {"kind": kind, "params": params, "positions": positions, "scored": scored,
            "windows": len(windows), "t_ingest": t_ingest, "t_scoring": t_scoring,
            "t_direct": t_direct,
            "mean_seqatlas": float(ours.mean()), "mean_direct": float(theirs.mean()),
            "max_abs_diff": float(np.max(np.abs(ours - theirs))),
            "threads": torch.get_num_threads()}


def _problem(result: dict) -> str:
    return f"skipped: {result['skipped']}" if "skipped" in result else \
        f"FAILED: {result['error']}"


def part1(args, work: Path) -> None:
    rng = random.Random(args.seed)
    proteins = {f"p{i}": random_seq(AMINO, rng.randint(args.min_length, args.max_length), rng)
                for i in range(args.proteins)}
    dna_lengths = []
    left = int(args.dna_kb * 1000)
    while left > 0:  # sequences of 1-2 kb
        n = min(left, rng.randint(1000, 2000))
        dna_lengths.append(n)
        left -= n
    dna = {f"d{i}": random_seq(DNA, n, rng) for i, n in enumerate(dna_lengths)}
    inputs = {"protein": (proteins, write_fasta(work / "proteins.fa", proteins)),
              "dna": (dna, write_fasta(work / "dna.fa", dna))}
    lengths = [len(s) for s in proteins.values()]
    print(f"\n1. exact ingest per adapter vs the package's own model (naive PLL loop, "
          f"{args.chunk} masked copies per forward)")
    print(f"proteins: {len(proteins)} random, lengths {min(lengths)}-{max(lengths)}, "
          f"{sum(lengths):,} positions; DNA (gpn): {len(dna)} random sequences, "
          f"{sum(dna_lengths):,} bases")

    # the first ingest of a process pays imports (pyarrow, the pipeline): paid here, untimed
    import seqatlas
    from tests.conftest import make_esm

    warm = work / "warmup"
    warm.mkdir()
    tiny = make_esm(warm / "model", context_tokens=40)
    seqatlas.ingest(write_fasta(warm / "w.fa", {"w": "ACDEFGHIKLMNPQ"}), atlas=warm / "a",
                    model=str(tiny), adapter="transformers", likelihood="exact",
                    embeddings=False, workers=0, progress=False)

    header = (f"{'adapter':<13}{'kind':<8}{'params':>9}{'positions':>10}{'windows':>8}"
              f"{'seqatlas s':>11}{'(scoring)':>10}{'pos/s':>8}{'direct s':>10}{'pos/s':>8}"
              f"{'ratio':>7}{'mean logp sa':>13}{'direct':>9}{'max |diff|':>11}")
    rows = []
    for name in args.only or CASES:
        try:
            rows.append((name, run_adapter(name, args, work, inputs)))
        except Exception as exc:
            rows.append((name, {"error": f"{type(exc).__name__}: {exc}"}))
            if args.verbose:
                traceback.print_exc()
        r = rows[-1][1]
        if "skipped" in r or "error" in r:
            print(f"  {name}: {_problem(r)}", flush=True)
        else:
            print(f"  {name}: done ({r['t_ingest'] + r['t_direct']:.1f} s)", flush=True)
    print()
    print(header)
    for name, r in rows:
        if "skipped" in r or "error" in r:
            print(f"{name:<13}{_problem(r)}")
            continue
        sa, di = r["positions"] / r["t_ingest"], r["positions"] / r["t_direct"]
        print(f"{name:<13}{r['kind']:<8}{r['params']:>9,}{r['positions']:>10,}{r['windows']:>8}"
              f"{r['t_ingest']:>11.2f}{r['t_scoring']:>10.2f}{sa:>8.0f}{r['t_direct']:>10.2f}"
              f"{di:>8.0f}{sa / di:>7.2f}{r['mean_seqatlas']:>13.4f}{r['mean_direct']:>9.4f}"
              f"{r['max_abs_diff']:>11.1e}")
        if r["scored"] != r["positions"]:
            print(f"  note: the atlas scored {r['scored']:,} of {r['positions']:,} positions")
    print("ratio = seqatlas positions/s / direct positions/s (target >= 1). seqatlas s: the "
          "whole ingest call (its pos/s and the ratio use it); (scoring): the report's "
          "seconds of scoring work units; direct: the loop only, model loading untimed.")


# ---------------------------------------------------------------------------------------
# part 2


DNA_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
GPT_VOCAB = ["<|endoftext|>", "<pad>", *DNA, "N"]


def build_dna_pair(directory: Path, positions: int) -> tuple[Path, Path]:
    """A GPT-2 and a BERT of one shape (hidden, layers, heads, FFN 4x hidden, learned
    positions), each with a one-letter ACGT vocabulary and its own special tokens."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

    gpt, bert = directory / "gpt2", directory / "bert"
    gpt.mkdir(parents=True, exist_ok=True)
    bert.mkdir(parents=True, exist_ok=True)
    (gpt / "vocab.txt").write_text("\n".join(GPT_VOCAB) + "\n")
    torch.manual_seed(4)
    GPT2LMHeadModel(GPT2Config(
        vocab_size=len(GPT_VOCAB), n_positions=positions, n_embd=HIDDEN, n_layer=LAYERS,
        n_head=HEADS, n_inner=4 * HIDDEN, bos_token_id=0, eos_token_id=0, pad_token_id=1,
    )).eval().save_pretrained(gpt)
    vocab = DNA_SPECIALS + list(DNA) + ["N"]
    (bert / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(5)
    BertForMaskedLM(BertConfig(
        vocab_size=len(vocab), hidden_size=HIDDEN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, intermediate_size=4 * HIDDEN,
        max_position_embeddings=positions, pad_token_id=0)).save_pretrained(bert)
    return gpt, bert


def part2(args, work: Path) -> None:
    import seqatlas

    rng = random.Random(args.seed + 1)
    length = int(args.causal_kb * 1000)
    fasta = write_fasta(work / "causal.fa", {"dna": random_seq(DNA, length, rng)})
    gpt, bert = build_dna_pair(work / "models" / "dna_pair", args.window + 2)
    print(f"\n2. causal vs masked: GPT-2 and BERT of one shape (hidden {HIDDEN}, {LAYERS} "
          f"layers, {HEADS} heads), {length:,} random bases, windows of {args.window} "
          f"(overlap {args.window // 4})")
    runs = (("GPT-2", gpt, "transformers-causal", "causal"),
            ("BERT", bert, "transformers", "fast"),
            ("BERT", bert, "transformers", "exact"))
    results = {}
    for model_name, model, adapter, mode in runs:
        try:
            atlas = work / f"atlas_{model_name}_{mode}"
            t0 = time.perf_counter()
            seqatlas.ingest(fasta, atlas=atlas, model=str(model), adapter=adapter, kind="dna",
                            likelihood=mode, embeddings=False, window=args.window,
                            workers=0, progress=False)
            results[mode] = time.perf_counter() - t0
            print(f"  {model_name} {mode}: done ({results[mode]:.1f} s)", flush=True)
        except Exception as exc:
            print(f"  {model_name} {mode}: FAILED: {type(exc).__name__}: {exc}")
            if args.verbose:
                traceback.print_exc()
    print()
    print(f"{'model':<8}{'likelihood':<12}{'seconds':>9}{'pos/s':>10}{'x causal':>10}")
    for model_name, _, _, mode in runs:
        if mode not in results:
            print(f"{model_name:<8}{mode:<12}{'failed':>9}")
            continue
        ratio = (f"{results[mode] / results['causal']:>10.1f}" if "causal" in results
                 else f"{'-':>10}")
        print(f"{model_name:<8}{mode:<12}{results[mode]:>9.2f}{length / results[mode]:>10,.0f}"
              f"{ratio}")
    print("x causal = seconds / seconds of the causal GPT-2 ingest (exact/causal, fast/causal)")


# ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs: about a minute")
    parser.add_argument("--proteins", type=int, default=None, help="default 20 (quick: 6)")
    parser.add_argument("--min-length", type=int, default=100)
    parser.add_argument("--max-length", type=int, default=300)
    parser.add_argument("--dna-kb", type=float, default=None,
                        help="DNA for gpn, in 1-2 kb sequences; default 3 (quick: 1)")
    parser.add_argument("--causal-kb", type=float, default=None,
                        help="DNA of part 2; default 20 (quick: 5)")
    parser.add_argument("--window", type=int, default=256, help="part 2's window (bases)")
    parser.add_argument("--chunk", type=int, default=32, help="masked copies per forward "
                        "in the direct loop")
    parser.add_argument("--only", nargs="+", choices=list(CASES), help="these adapters only")
    parser.add_argument("--skip-causal", action="store_true", help="part 1 only")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for both sides (default: torch's own)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each side per "
                        "adapter, alternating; the best of each is reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="keep models and atlases here "
                        "(emptied atlases are not reused: give a fresh directory)")
    parser.add_argument("--verbose", action="store_true", help="tracebacks of failures")
    args = parser.parse_args()
    args.proteins = args.proteins or (6 if args.quick else 20)
    args.dna_kb = args.dna_kb or (1 if args.quick else 3)
    args.causal_kb = args.causal_kb or (5 if args.quick else 20)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    try:  # transformers' save/load progress bars would interleave with the tables
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:
        pass
    # random weights score below uniform: ingest warns "model ... may be out of domain"
    warnings.filterwarnings("ignore", message="model .* may be out of domain")
    print(f"seqatlas adapters benchmark{' (--quick)' if args.quick else ''}: torch "
          f"{torch.__version__}, {torch.get_num_threads()} torch threads, "
          f"os.cpu_count() = {os.cpu_count()}, python {sys.version.split()[0]}")
    load = os.getloadavg()[0]
    print(f"load average (1 min) before: {load:.2f}"
          + ("  WARNING: other processes are using the CPU; with torch's threads competing "
             "for cores, timings are slow and noisy (try --threads 1 or --repeat 2)"
             if load > 0.5 else ""))
    print(f"transformer models: hidden {HIDDEN}, {LAYERS} layers, {HEADS} heads; CARP "
          f"d_model {CARP_ARCHITECTURE['d_model']}, {CARP_ARCHITECTURE['n_layers']} layers; "
          f"GPN ConvNet hidden {HIDDEN}, {GPN_LAYERS} layers")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="seqatlas-bench-adapters-") as scratch:
        work = args.workdir or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        # this run's weights-hash cache, not the user's
        os.environ["SEQATLAS_CACHE_DIR"] = str(work / "cache")
        try:
            part1(args, work)
        except Exception as exc:
            print(f"part 1 FAILED: {type(exc).__name__}: {exc}")
            if args.verbose:
                traceback.print_exc()
        if not args.skip_causal:
            try:
                part2(args, work)
            except Exception as exc:
                print(f"part 2 FAILED: {type(exc).__name__}: {exc}")
                if args.verbose:
                    traceback.print_exc()
    print(f"\ntotal {time.perf_counter() - start:.0f} s; torch threads at the end: "
          f"{torch.get_num_threads()}; load average (1 min) after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
