"""The model adapter protocol: every model seqatlas scores with goes through one adapter.

An adapter turns a checkpoint into two things, and nothing above ``checkpoints/`` knows which
adapter it runs:

- on the driver, without loading weights, a :class:`~seqatlas.checkpoints.spec.ModelSpec`
  (:meth:`ModelAdapter.resolve`): the alphabet and tokenizer family (a vocabulary read by
  :mod:`seqatlas.checkpoints.tokenizers`), the context length in tokens, the special tokens
  (the prefix and suffix placed around residues, the mask token, or ``mask = -1`` for a model
  that cannot mask), the objective (``masked``: a hidden token is predicted from both sides;
  ``causal``: each token from those before it), and the identity the manifest records (the
  weights' sha256, plus ``code_sha256`` when code travels with the weights);
- on a worker, a :class:`ScoringModel` (:meth:`ModelAdapter.load`): ``encode`` runs the
  model body on a padded batch of token ids and returns the final hidden states and those of
  chosen layers (0 = the input embeddings), ``head_logits`` runs the language-model head on
  some of those hidden states. The scorer reads the head only where it needs it.

Adapters shipped: ``transformers`` (masked LMs), ``transformers-causal`` (any
``AutoModelForCausalLM``), ``fair-esm`` (``.pt`` files of ESM-1b, ESM-1v, ESM-2), ``esmc``
(EvolutionaryScale's ESM C), ``carp`` (``sequence-models``' CARP) and ``gpn``. Each optional
package is imported only inside its adapter, and a missing one is named with the extra that
installs it. Third-party adapters register under the entry-point group
:data:`ENTRY_POINT_GROUP` (``seqatlas.models``): the entry point names a
:class:`ModelAdapter` subclass (or instance); ``seqatlas models`` lists it and ``--adapter
NAME`` (or detection through :meth:`ModelAdapter.claims`) uses it.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from seqatlas.errors import ModelError

if TYPE_CHECKING:
    from seqatlas.checkpoints.spec import ModelSpec

ENTRY_POINT_GROUP = "seqatlas.models"


@dataclass(frozen=True)
class ModelRequest:
    """What the user asked for, located: ``path`` is a local directory or file."""

    name: str  # as given (an embedded name, a path, a hub id)
    path: Path
    source: str  # embedded | directory | file | hub
    kind: str  # protein | dna | rna
    tokenizer: str | None = None  # a tokenizer family that overrides detection
    trust_remote_code: bool = False


class ScoringModel(ABC):
    """A loaded model, split into body and language-model head (worker side)."""

    spec: ModelSpec
    device: object  # a torch.device
    autocast_dtype: object = None  # torch dtype the body and head run in, None: float32

    @abstractmethod
    def encode(self, input_ids, attention_mask, layers):
        """``(last, hidden)``: the final hidden states (batch, tokens, dim) and those of
        ``layers``: one tensor for an int, a list for a list, None for None. Layer 0 is the
        input embeddings, ``spec.num_layers`` the last. ``attention_mask`` is 1 on real
        tokens; padding (``spec.specials.pad``) only ever follows them."""

    @abstractmethod
    def head_logits(self, hidden):
        """Language-model logits over the whole vocabulary for hidden states (n, dim)."""

    def token_logits(self, hidden, token_ids):
        """Head logits restricted to ``token_ids`` (a sorted id tensor), in float32."""
        import torch

        with torch.autocast(self.device.type, dtype=self.autocast_dtype,
                            enabled=self.autocast_dtype is not None):
            logits = self.head_logits(hidden)
        first, last = int(token_ids[0]), int(token_ids[-1])
        if last - first + 1 == len(token_ids):  # contiguous ids (k-mer blocks)
            # contiguous rows: a softmax over a strided slice runs several times slower
            return logits[:, first : last + 1].float().contiguous()
        return logits[:, token_ids].float()

    def autocast(self):
        """The autocast context the body runs in (bf16 on CUDA, none on CPU)."""
        import torch

        return torch.autocast(self.device.type, dtype=self.autocast_dtype,
                              enabled=self.autocast_dtype is not None)


def wanted_layers(layers) -> list[int]:
    """``layers`` (None, an int or a list) as a list."""
    return [] if layers is None else [layers] if isinstance(layers, int) else list(layers)


def pick_layers(layers, by_layer) -> object:
    """``by_layer(layer)`` for each of ``layers``, shaped as :meth:`ScoringModel.encode`
    returns them (one tensor for an int, a list for a list, None for None)."""
    if layers is None:
        return None
    hidden = [by_layer(layer) for layer in wanted_layers(layers)]
    return hidden[0] if isinstance(layers, int) else hidden


def require_protein(request: ModelRequest, model: str) -> None:
    """Refuse a DNA or RNA input to a protein-only model (``model``: what it is, in words)."""
    if request.kind != "protein":
        raise ModelError(f"model {request.name!r} is {model}, but the input is {request.kind}: "
                         f"pass --model with a checkpoint for {request.kind}")


class ModelAdapter(ABC):
    """One family of checkpoints: how to recognise, describe and load them."""

    name: str = ""
    description: str = ""
    extra: str | None = None  # pip extra of seqatlas that installs what it needs
    packages: tuple[str, ...] = ()  # importable modules it needs beyond torch/transformers
    checkpoint: str = ""  # what the user passes to --model, in words

    def missing(self) -> list[str]:
        """The modules in :attr:`packages` that are not importable."""
        return [p for p in self.packages if importlib.util.find_spec(p) is None]

    def require(self) -> None:
        """Raise a :class:`ModelError` naming the extra to install when a package is missing."""
        missing = self.missing()
        if missing:
            install = f"pip install 'seqatlas[{self.extra}]'" if self.extra else \
                f"pip install {' '.join(missing)}"
            raise ModelError(f"the {self.name} adapter needs the {', '.join(missing)} "
                             f"package{'s' if len(missing) > 1 else ''}, which is not "
                             f"installed: {install}")

    @abstractmethod
    def claims(self, path: Path) -> bool:
        """Whether ``path`` looks like this adapter's checkpoint (cheap: no weights loaded)."""

    @abstractmethod
    def resolve(self, request: ModelRequest) -> ModelSpec:
        """The spec of the requested checkpoint, read without loading its weights where
        the format allows."""

    @abstractmethod
    def load(self, spec: ModelSpec, *, device: str = "cpu") -> ScoringModel:
        """The model of ``spec`` on ``device``, in eval mode."""

    def summary(self) -> dict:
        """What ``seqatlas models`` shows of this adapter."""
        missing = self.missing()
        return {"adapter": self.name, "checkpoint": self.checkpoint,
                "description": self.description,
                "installed": not missing,
                "install": None if not missing else
                (f"pip install 'seqatlas[{self.extra}]'" if self.extra
                 else f"pip install {' '.join(missing)}")}
