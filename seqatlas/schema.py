"""The Arrow schemas of every atlas table; nothing else invents column names.

Coordinates are 0-based, half-open (BED) everywhere.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 2  # 2: copy_offset, copy_strand in positions
# Versions this seqatlas reads; columns an older part lacks read as null.
READABLE_VERSIONS = (1, 2)

TABLES = ("sequences", "positions", "tokens", "repeats", "ablations")

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
    ]
)
