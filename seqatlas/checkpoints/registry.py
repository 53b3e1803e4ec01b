"""The adapters seqatlas knows: those it ships and those installed under the entry-point
group ``seqatlas.models`` (:data:`~seqatlas.checkpoints.adapter.ENTRY_POINT_GROUP`)."""

from __future__ import annotations

import importlib
from importlib import metadata

from seqatlas.checkpoints.adapter import ENTRY_POINT_GROUP, ModelAdapter
from seqatlas.errors import ModelError

# name -> "module:class", imported when asked for (an adapter module imports its optional
# package only inside its methods, so importing the module itself is cheap)
BUILTIN_ADAPTERS = {
    "transformers": "seqatlas.checkpoints.hf_masked:TransformersMaskedAdapter",
    "transformers-causal": "seqatlas.checkpoints.hf_causal:TransformersCausalAdapter",
    "fair-esm": "seqatlas.checkpoints.fair_esm:FairEsmAdapter",
    "esmc": "seqatlas.checkpoints.esmc:EsmCAdapter",
    "carp": "seqatlas.checkpoints.carp:CarpAdapter",
    "gpn": "seqatlas.checkpoints.gpn:GpnAdapter",
}
# the order in which detection asks adapters whether a checkpoint is theirs: specific
# formats before the generic transformers ones (plugins are asked first of all)
DETECTION_ORDER = ("gpn", "fair-esm", "carp", "esmc", "transformers-causal", "transformers")


def _instantiate(target, where: str) -> ModelAdapter:
    adapter = target() if isinstance(target, type) else target
    if not isinstance(adapter, ModelAdapter):
        raise ModelError(f"{where} is not a seqatlas ModelAdapter (a subclass of "
                         "seqatlas.checkpoints.adapter.ModelAdapter, or an instance of one)")
    return adapter


def _load_path(path: str) -> ModelAdapter:
    module, _, name = path.partition(":")
    return _instantiate(getattr(importlib.import_module(module), name), path)


def plugin_entry_points() -> dict[str, metadata.EntryPoint]:
    """The installed third-party adapters' entry points, by name."""
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def get_adapter(name: str) -> ModelAdapter:
    """The adapter called ``name`` (a shipped one or an installed plugin)."""
    if name in BUILTIN_ADAPTERS:
        return _load_path(BUILTIN_ADAPTERS[name])
    plugins = plugin_entry_points()
    if name in plugins:
        try:
            target = plugins[name].load()
        except Exception as exc:
            raise ModelError(f"the model adapter plugin {name!r} ({plugins[name].value}) "
                             f"failed to import: {type(exc).__name__}: {exc}") from None
        return _instantiate(target, f"the entry point {name} = {plugins[name].value}")
    known = sorted(BUILTIN_ADAPTERS) + sorted(plugins)
    raise ModelError(f"unknown model adapter {name!r}; the adapters are {', '.join(known)} "
                     "(seqatlas models lists them; a plugin registers under the entry-point "
                     f"group {ENTRY_POINT_GROUP!r})")


def all_adapters() -> list[ModelAdapter]:
    """Every adapter: plugins first, then the shipped ones in detection order."""
    plugins = [get_adapter(name) for name in sorted(plugin_entry_points())
               if name not in BUILTIN_ADAPTERS]
    return plugins + [get_adapter(name) for name in DETECTION_ORDER]
