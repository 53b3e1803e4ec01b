"""The Arrow schemas of every atlas table; nothing else invents column names.

Coordinates are 0-based, half-open (BED) everywhere.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 2  # 2: copy_offset, copy_strand in positions
# Versions this seqatlas reads; columns an older part lacks read as null.
READABLE_VERSIONS = (1, 2)

TABLES = ("sequences", "positions", "tokens", "repeats", "ablations", "variants", "pooled")

SEQUENCES = pa.schema(
    [
        pa.field("seq_id", pa.string(), nullable=False),
        pa.field("ordinal", pa.int64(), nullable=False),  # order of first appearance in the atlas
        pa.field("length", pa.int64(), nullable=False),
        pa.field("description", pa.string()),
        pa.field("source", pa.string()),  # absolute path of the input file
        pa.field("sha1", pa.string()),  # of the uppercase residues
        pa.field("global_start", pa.int64(), nullable=False),  # sum of lengths of earlier sequences
        pa.field("token_offset", pa.int64(), nullable=False),  # first token_id of this sequence
    ]
)

POSITIONS = pa.schema(
    [
        pa.field("seq_id", pa.string(), nullable=False),
        pa.field("pos", pa.int64(), nullable=False),
        pa.field("ref", pa.string(), nullable=False),  # uppercase residue or base
        pa.field("soft_masked", pa.bool_(), nullable=False),  # lowercase in the input
        pa.field("logp", pa.float32()),  # masked marginal log p(ref), the PLL term
        pa.field("logp_unmasked", pa.float32()),  # log p(ref) with ref visible
        # --strands both: the reverse strand's values at the same base, and the means
        pa.field("logp_rc", pa.float32()),
        pa.field("logp_unmasked_rc", pa.float32()),
        pa.field("logp_mean", pa.float32()),
        pa.field("logp_unmasked_mean", pa.float32()),
        pa.field("entropy", pa.float32()),  # nats, of the distribution logp comes from
        pa.field("rank", pa.int16()),  # 1 = ref is the model's top letter
        pa.field("window_start", pa.int64()),  # null: in a long N run, not scored
        pa.field("window_end", pa.int64()),
        # in-context copy (seqatlas.copy_detector): the nearest other occurrence of the k-mer
        # around pos inside [window_start, window_end), k = the manifest's scoring.copy_k
        pa.field("copy_offset", pa.int32()),  # its residue matching pos, minus pos; null: none
        pa.field("copy_strand", pa.string()),  # "+" direct, "-" reverse complement (DNA/RNA)
    ]
)


# ``--distributions``: how each position's predicted distribution over the kind's standard
# letters is stored (log-probabilities, one list per position and strand); none: not stored
LETTER_DTYPES = ("float32", "float16")
DISTRIBUTION_CHOICES = LETTER_DTYPES + ("none",)
LETTER_COLUMNS = ("letter_logp", "letter_logp_rc")


def positions_schema(letters: int | None = None, dtype: str | None = None) -> pa.Schema:
    """Schema of the positions table; with ``letters`` (the number of the kind's standard
    letters) and ``dtype``, the distribution columns too.

    ``letter_logp[k]`` is log p(letter k) of the distribution ``logp`` comes from (masked
    marginal for exact/fast, wild-type marginal for unmasked), letters in the order the
    manifest's ``scoring.distribution_letters`` gives; ``letter_logp_rc`` is the reverse
    strand's, read back onto the forward strand (its k is the forward letter whose complement
    the reverse pass scored). Null where the position has no distribution.
    """
    if not letters or dtype is None:
        return POSITIONS
    value = pa.float16() if dtype == "float16" else pa.float32()
    return pa.schema(list(POSITIONS) + [pa.field(name, pa.list_(value, letters))
                                        for name in LETTER_COLUMNS])


def tokens_schema(embedding_dim: int | None, extra_layers=()) -> pa.Schema:
    """Schema of the tokens table; without embeddings the embedding columns are absent.

    ``embedding`` holds the first requested layer; each further layer L has its own column
    ``embedding_layer_{L}`` (see :func:`layer_column`).
    """
    fields = [
        # global and unique: the sequence's global_start + the token's start
        pa.field("token_id", pa.int64(), nullable=False),
        pa.field("seq_id", pa.string(), nullable=False),
        pa.field("start", pa.int64(), nullable=False),
        pa.field("end", pa.int64(), nullable=False),
        pa.field("token", pa.string(), nullable=False),
    ]
    if embedding_dim:
        fields.append(pa.field("embedding", pa.list_(pa.float16(), embedding_dim)))
        fields += [pa.field(f"embedding_layer_{layer}", pa.list_(pa.float16(), embedding_dim))
                   for layer in extra_layers]
    return pa.schema(fields)


def layer_column(layers: list[int], layer: int) -> str:
    """The tokens column holding ``layer`` when the atlas stores ``layers``."""
    return "embedding" if layer == layers[0] else f"embedding_layer_{layer}"


# ``pooled``: one vector per sequence (``level`` "sequence") or per fixed bin of a sequence
# (``level`` "bin"), pooled from the tokens table's stored embeddings of one hidden ``layer``.
# ``pooling`` "mean": the mean of the float16 embeddings of the tokens starting in
# [start, end), each as its owning window computed it (``tokens`` of them); "bos": the
# hidden state of the BOS/CLS token of the window that starts the sequence.
# ``pool_id`` (the sequence's token_offset + start) is unique per (pooling, layer) and is
# the row's id in a pooled index.
POOLINGS = ("mean", "bos")
POOL_LEVELS = ("sequence", "bin")


def pooled_schema(embedding_dim: int | None) -> pa.Schema:
    """Schema of the pooled table; without embeddings the vector column is absent."""
    fields = [
        pa.field("seq_id", pa.string(), nullable=False),
        pa.field("start", pa.int64(), nullable=False),
        pa.field("end", pa.int64(), nullable=False),
        pa.field("level", pa.string(), nullable=False),  # sequence | bin
        pa.field("pooling", pa.string(), nullable=False),  # mean | bos
        pa.field("layer", pa.int16(), nullable=False),
        pa.field("tokens", pa.int32(), nullable=False),  # tokens pooled (bos: 1)
        pa.field("pool_id", pa.int64(), nullable=False),
    ]
    if embedding_dim:
        fields.append(pa.field("vector", pa.list_(pa.float16(), embedding_dim)))
    return pa.schema(fields)


REPEATS = pa.schema(
    [
        pa.field("seq_id", pa.string(), nullable=False),
        pa.field("start", pa.int64(), nullable=False),
        pa.field("end", pa.int64(), nullable=False),
        pa.field("strand", pa.string()),  # "+", "-" or null when the format has none
        pa.field("name", pa.string()),  # repeat name, or the unit of a tandem repeat
        pa.field("class", pa.string()),
        pa.field("family", pa.string()),
        pa.field("source", pa.string(), nullable=False),  # format the row came from
        pa.field("score", pa.float64()),
    ]
)


# the ``repeats`` rows of ``annotate --detect`` (seqatlas.repeats.copies): their source and class
COPY_REPEAT_SOURCE = "seqatlas-copies"
COPY_REPEAT_CLASS = "in_context_copy"

# how ``probe icl`` and ``probe doubling`` corrupt a region (seqatlas.scoring.ablation): the
# values of the ablations table's ``method`` column
ABLATION_METHODS = ("mask", "shuffle", "substitute")

# ``probe icl`` (seqatlas.probe.icl): one row per probed position, method and seed. A target is
# a run of positions of one window whose in-context copies form one stretch (the partner);
# intervals are 0-based half-open, in sequence coordinates, inside [window_start, window_end).
ABLATIONS = pa.schema(
    [
        pa.field("seq_id", pa.string(), nullable=False),
        pa.field("pos", pa.int64(), nullable=False),
        pa.field("target_start", pa.int64(), nullable=False),
        pa.field("target_end", pa.int64(), nullable=False),
        pa.field("partner_start", pa.int64(), nullable=False),
        pa.field("partner_end", pa.int64(), nullable=False),
        pa.field("control_start", pa.int64()),  # null: no admissible control region
        pa.field("control_end", pa.int64()),
        pa.field("control_rule", pa.string(), nullable=False),  # mirror | nearest | none
        pa.field("copy_strand", pa.string(), nullable=False),  # "+" direct, "-" reverse compl.
        pa.field("window_start", pa.int64(), nullable=False),  # the window rescored
        pa.field("window_end", pa.int64(), nullable=False),
        pa.field("method", pa.string(), nullable=False),  # mask | shuffle | substitute
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("logp_intact", pa.float32()),
        pa.field("logp_partner", pa.float32()),  # the partner corrupted
        pa.field("logp_control", pa.float32()),  # the control region corrupted the same way
        pa.field("icl_gain", pa.float32()),  # logp_intact - logp_partner
        pa.field("control_gain", pa.float32()),  # logp_intact - logp_control
        pa.field("net_gain", pa.float32()),  # icl_gain - control_gain
    ]
)

# ``probe doubling`` (seqatlas.probe.doubling): one row per input sequence and variant. The
# logp columns are means over copy 1 (the sequence itself) in each construct.
DOUBLING = pa.schema(
    [
        pa.field("seq_id", pa.string(), nullable=False),
        pa.field("variant", pa.string(), nullable=False),  # original | shuffled
        pa.field("length", pa.int64(), nullable=False),
        pa.field("method", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("logp_alone", pa.float64()),  # S alone
        pa.field("logp_doubled", pa.float64()),  # S+S
        pa.field("logp_partner", pa.float64()),  # S+S, copy 2 corrupted
        pa.field("logp_control_intact", pa.float64()),  # S+C, C a same-composition shuffle of S
        pa.field("logp_control", pa.float64()),  # S+C, C corrupted the same way
        pa.field("icl_gain", pa.float64()),  # logp_doubled - logp_partner
        pa.field("control_gain", pa.float64()),  # logp_control_intact - logp_control
        pa.field("net_gain", pa.float64()),  # icl_gain - control_gain
        pa.field("doubling_gain", pa.float64()),  # logp_doubled - logp_alone
        # the copy scored: 1 (S, copy 2 its partner) or 2 (copy 1 its partner; what a causal
        # model can look up on its strand); null in tables written before it (copy 1)
        pa.field("scored_copy", pa.int8()),
    ]
)


# ``variants score --store NAME``: a named variant set, one row per site of each variant
# (multi-mutants: one row per site, sharing ``variant_id``); ``pos`` is the atlas's 0-based
# coordinate, ``input_position`` the input's own (1-based) one.
VARIANTS = pa.schema(
    [
        pa.field("variant_set", pa.string(), nullable=False),
        pa.field("variant_id", pa.string(), nullable=False),
        pa.field("source", pa.string()),  # the input file
        pa.field("line", pa.int64()),  # its 1-based line (null: a command-line argument)
        pa.field("seq_id", pa.string()),  # the atlas's sequence (null: not matched)
        pa.field("input_seq_id", pa.string()),  # as written in the input
        pa.field("pos", pa.int64()),  # 0-based, in the atlas sequence
        pa.field("input_position", pa.int64()),  # as written (1-based)
        pa.field("ref", pa.string()),
        pa.field("alt", pa.string()),
        pa.field("n_sites", pa.int32(), nullable=False),
        pa.field("measured_score", pa.float64()),
        pa.field("measured_bin", pa.int8()),
        pa.field("problem", pa.string()),  # why it cannot be scored; null: scorable
        pa.field("llr", pa.float64()),  # the site's LLR when it was stored
        # scored with --lookup (else null): its method and seed, and the site's look-up rows
        pa.field("lookup_method", pa.string()),
        pa.field("lookup_seed", pa.int64()),
        pa.field("llr_intact", pa.float64()),
        pa.field("llr_partner", pa.float64()),
        pa.field("llr_control", pa.float64()),
        pa.field("lookup_shift", pa.float64()),
    ]
)

# ``variants score``: one row per variant (``--per-site``: per site, ``site`` its index). The
# site columns (input_position .. net_gain) are those of the variant's one site; a
# multi-mutant's are null unless per site. LLRs are in nats, log p(alt) - log p(ref) at the
# site; a multi-mutant's are sums over its sites. See the README's "Variant effects".
VARIANT_SCORES = pa.schema(
    [
        pa.field("variant_id", pa.string(), nullable=False),
        pa.field("site", pa.int32()),  # --per-site: 0-based index of the site in the variant
        pa.field("source", pa.string()),
        pa.field("line", pa.int64()),  # 1-based line in the input (null: an argument)
        pa.field("input_seq_id", pa.string()),
        pa.field("seq_id", pa.string()),  # the atlas's sequence
        pa.field("n_sites", pa.int32(), nullable=False),
        pa.field("input_position", pa.int64()),  # the input's 1-based coordinate
        pa.field("pos", pa.int64()),  # 0-based, in the atlas sequence
        pa.field("ref", pa.string()),
        pa.field("alt", pa.string()),
        pa.field("atlas_ref", pa.string()),  # what the atlas has there
        pa.field("llr", pa.float64()),  # the score: strand mean with both strands
        pa.field("llr_fwd", pa.float64()),
        pa.field("llr_rc", pa.float64()),  # the reverse strand's (DNA/RNA, --strands both)
        pa.field("llr_joint", pa.float64()),  # --joint: every site masked at once
        pa.field("p_alt", pa.float64()),
        pa.field("p_ref", pa.float64()),
        pa.field("rank_alt", pa.int16()),  # 1 = the model's top letter
        pa.field("entropy", pa.float32()),  # nats, of the site's stored distribution
        pa.field("z", pa.float64()),  # robust z of the atlas's likelihood at the site
        pa.field("repeat_classes", pa.string()),  # classes of the repeats over the site
        pa.field("in_copy", pa.bool_()),  # some site has an in-context copy
        pa.field("copy_offset", pa.int32()),
        pa.field("copy_strand", pa.string()),
        pa.field("icl_gain", pa.float64()),  # probe icl's stored values at the site
        pa.field("control_gain", pa.float64()),
        pa.field("net_gain", pa.float64()),
        # --lookup: the LLR with the copy partner corrupted, with the matched control
        # corrupted, and what is attributed to look-up (see the README)
        pa.field("llr_intact", pa.float64()),
        pa.field("llr_partner", pa.float64()),
        pa.field("llr_control", pa.float64()),
        pa.field("icl_shift", pa.float64()),  # llr_intact - llr_partner
        pa.field("control_shift", pa.float64()),  # llr_intact - llr_control
        pa.field("lookup_shift", pa.float64()),  # icl_shift - control_shift
        pa.field("llr_corrected", pa.float64()),  # llr_intact - lookup_shift
        pa.field("partner_mutated", pa.bool_()),  # another site lies in a site's partner
        pa.field("measured_score", pa.float64()),
        pa.field("measured_bin", pa.int8()),
        pa.field("duplicate_of", pa.int64()),  # line of an identical earlier variant
        pa.field("distribution", pa.string()),  # stored | rescored
        pa.field("problem", pa.string()),  # why it could not be scored; null: scored
    ]
)


# ``seqatlas.variants.scan``: every substitution at every position of a region, read from the
# stored distributions (``letter_logp``); ``pos`` 0-based as everywhere, ``position`` the same
# site 1-based (pos + 1), as mutant strings and VCF number it. LLRs in nats as VARIANT_SCORES.
SCAN = pa.schema(
    [
        pa.field("seq_id", pa.string(), nullable=False),
        pa.field("pos", pa.int64(), nullable=False),
        pa.field("position", pa.int64(), nullable=False),  # 1-based: pos + 1
        pa.field("ref", pa.string(), nullable=False),
        pa.field("alt", pa.string(), nullable=False),
        pa.field("llr", pa.float64()),  # strand mean with both strands, else llr_fwd
        pa.field("llr_fwd", pa.float64()),
        pa.field("llr_rc", pa.float64()),  # null with one strand
        pa.field("p_alt", pa.float64()),  # both strands: the mean of the two probabilities
        pa.field("rank_alt", pa.int16()),  # 1 = the model's top letter
        pa.field("entropy", pa.float32()),  # the positions row's
        pa.field("copy_offset", pa.int32()),
        pa.field("copy_strand", pa.string()),
    ]
)

# ``seqatlas.variants.scan.constraint_track``: per position, the mean and the minimum LLR of
# its substitutions (the same numbers ``export bigwig --column mean_llr|min_llr`` writes)
CONSTRAINT = pa.schema(
    [
        pa.field("seq_id", pa.string(), nullable=False),
        pa.field("pos", pa.int64(), nullable=False),
        pa.field("mean_llr", pa.float64()),
        pa.field("min_llr", pa.float64()),
    ]
)
