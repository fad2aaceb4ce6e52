"""Activation sources for teachers held by other model libraries: a TransformerLens
``HookedTransformer`` or ``TransformerBridge`` (:class:`LensSource`) or an nnsight model wrapping a Hugging Face causal LM
(:class:`NNsightSource`), each run only up to the deepest layer read; :func:`library_source` picks
the source for a model object by its kind.

Both follow pyfloor's layer convention: layer i at site ``"resid"`` is the residual stream after
block i, at site ``"mlp"`` block i's MLP output. Neither library is imported here: the model object
brings its own, so pyfloor runs without them.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .sources import Layers, SequenceSource, Site, TeacherSource, check_token_ids, layer_list
from .tokens import Sequences

__all__ = ["LensSource", "NNsightSource", "library_source"]

#: TransformerLens hook read at each site of block i: ``blocks.{i}.{hook}``
_LENS_HOOKS: dict[str, str] = {"resid": "hook_resid_post", "mlp": "hook_mlp_out"}
#: TransformerLens hooks laid out [batch, head, query, key], not one vector per token
_SCORE_HOOKS = ("hook_attn_scores", "hook_pattern")


def _hook_name(model: Any, layer: int | str, site: Site) -> str:
    """The TransformerLens hook read for ``layer``: ``blocks.{i}.hook_resid_post`` (``site="resid"``)
    or ``blocks.{i}.hook_mlp_out`` (``site="mlp"``) for block i; a string names any hook of
    ``model.hook_dict`` exactly. ValueError for an unknown block, hook or site."""
    if site not in _LENS_HOOKS:
        raise ValueError(f"site must be 'resid' or 'mlp'; got {site!r}")
    if isinstance(layer, str) and not layer.lstrip("-").isdigit():
        hooks = list(model.hook_dict)
        if layer not in model.hook_dict:
            common = ("hook_resid_pre", *_LENS_HOOKS.values(), "attn.hook_z")
            some = [h for h in hooks if h in ("hook_embed", *(f"blocks.0.{c}" for c in common))]
            raise ValueError(
                f"the model has no hook {layer!r}; valid hooks include {', '.join(some)}, … "
                f"({len(hooks)} in model.hook_dict)"
            )
        if layer.endswith(_SCORE_HOOKS):
            raise ValueError(f"hook {layer!r} holds attention scores per head and key, not one vector per token")
        return layer
    i, n_layers = int(layer), int(model.cfg.n_layers)
    if not 0 <= i < n_layers:
        raise ValueError(f"layer {i} does not exist: the model has blocks 0 … {n_layers - 1}")
    return f"blocks.{i}.{_LENS_HOOKS[site]}"


def _stop_at_layer(hook_names: list[str]) -> int | None:
    """TransformerLens' ``stop_at_layer`` for reading these hooks: one past the deepest block read
    (0 when only the embeddings are read); None (the whole model) for a hook after the blocks."""
    stops = []
    for name in hook_names:
        block = re.match(r"blocks\.(\d+)\.", name)
        if block is not None:
            stops.append(int(block[1]) + 1)
        elif name.startswith("hook_"):
            stops.append(0)
        else:
            return None
    return max(stops)


def _per_token(name: str, acts: Tensor, batch: tuple[int, ...]) -> Tensor:
    """A hook's activations [B, T, …] for a [B, T] batch as [B, T, d], the dimensions after the
    position flattened (e.g. ``attn.hook_z`` [B, T, heads, d_head] as [B, T, heads·d_head], the
    layout of attention-output SAEs); ValueError for anything not one vector per token."""
    if acts.ndim < 3 or tuple(acts.shape[:2]) != batch:
        raise ValueError(
            f"hook {name} gives activations of shape {tuple(acts.shape)}, not one vector per token of a "
            f"{list(batch)} batch"
        )
    return acts.flatten(2)


class LensSource(SequenceSource):
    """A TransformerLens ``HookedTransformer`` (or ``TransformerBridge``) read at one or more hooks
    over token sequences.

    ``layer``: a block index (or a list of them) read at ``site`` (``blocks.{i}.hook_resid_post``
    or ``blocks.{i}.hook_mlp_out``), or any hook name of ``model.hook_dict``. Each forward pass
    stops with TransformerLens' ``stop_at_layer`` after the deepest block read, so no block above
    it runs. The token ids go in as they are (a sequence's own BOS, never a second one), with the
    padding mask as ``attention_mask`` where the TransformerLens version takes one.
    """

    def __init__(
        self,
        model: Any,
        layer: Layers,
        sequences: Sequences,
        batch_tokens: int,
        *,
        site: Site = "resid",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if not (hasattr(model, "run_with_hooks") and hasattr(model, "hook_dict")):
            raise TypeError(
                f"{type(model).__name__} is not a TransformerLens model with hooks (run_with_hooks, hook_dict)"
            )
        self.lens = model
        names = [_hook_name(model, one, site) for one in layer_list(layer)]
        self.stop_at_layer = _stop_at_layer(names)
        self._takes_mask = "attention_mask" in inspect.signature(model.forward).parameters
        super().__init__(model, names, sequences, batch_tokens, device=device, dtype=dtype)

    def _widths(self) -> dict[str, int]:
        """``cfg.d_model`` when only block outputs and MLP outputs are read; else from a forward pass."""
        block_hooks = tuple(f".{hook}" for hook in _LENS_HOOKS.values())
        if all(re.fullmatch(r"blocks\.\d+\..*", n) and n.endswith(block_hooks) for n in self.layer_names):
            return dict.fromkeys(self.layer_names, int(self.lens.cfg.d_model))
        return super()._widths()

    def _teacher_name(self) -> str:
        return str(getattr(self.lens.cfg, "model_name", "") or type(self.lens).__name__)

    def _forward(self, ids: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """The read hooks' activations [B, T, d] for [B, T] ids, the model stopped after the deepest
        block read. ValueError for a token id outside the model's vocabulary."""
        check_token_ids(ids, int(self.lens.cfg.d_vocab), self.sequences.description)
        captured: dict[str, Tensor] = {}

        def hook_for(name: str) -> Callable[[Tensor, Any], None]:
            def save(acts: Tensor, hook: Any) -> None:
                captured[name] = acts

            return save

        masked = {"attention_mask": mask.to(self.device)} if self._takes_mask else {}
        with torch.no_grad():
            self.lens.run_with_hooks(
                ids.to(self.device),
                return_type=None,
                prepend_bos=False,
                stop_at_layer=self.stop_at_layer,
                fwd_hooks=[(name, hook_for(name)) for name in self.layer_names],
                **masked,
            )
        return {name: _per_token(name, captured[name], tuple(ids.shape)) for name in self.layer_names}


def _wrapped_module(model: Any) -> nn.Module:
    """The torch module an nnsight model wraps; TypeError for an object that wraps none."""
    for attribute in ("_module", "_model"):
        module = getattr(model, attribute, None)
        if isinstance(module, nn.Module):
            return module
    raise TypeError(f"{type(model).__name__} is not an nnsight model wrapping a torch module")


class NNsightSource(TeacherSource):
    """An nnsight model (``NNsight``, ``LanguageModel``, ``TransformersModel``) wrapping a Hugging
    Face causal LM, read at one or more layers (:func:`pyfloor.sources.find_layer` on the wrapped
    model: block outputs, their MLPs, or any module path) over token sequences.

    Each batch runs in ``model.trace``: the read modules' outputs are saved in the order the
    forward pass reaches them (found once, on the first two tokens) and the trace stops after
    the last of them, so no layer above the deepest runs. A lazily loaded model is dispatched
    (its weights loaded) when the source is made.
    """

    def __init__(
        self,
        model: Any,
        layer: Layers,
        sequences: Sequences,
        batch_tokens: int,
        *,
        site: Site = "resid",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if getattr(model, "dispatched", True) is False:
            model.dispatch()
        self.envoy = model
        self._order: list[str] | None = None  # the read modules in the order the forward pass reaches them
        super().__init__(_wrapped_module(model), layer, sequences, batch_tokens, site=site, device=device, dtype=dtype)

    def _forward(self, ids: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """The read modules' outputs [B, T, d] (a tuple's first element) for [B, T] ids, read in an
        nnsight trace stopped after the last of them. ValueError for a token id outside the vocabulary."""
        if self._order is None:  # the wrapped model run on two tokens: its hooks fire in execution order
            self._order = list(super()._forward(ids[:, :2], mask[:, :2]))
        check_token_ids(ids, self._vocab, self.sequences.description)
        saved: dict[str, Any] = {}
        with torch.no_grad():
            with self.envoy.trace(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device), use_cache=False
            ) as tracer:
                for name in self._order:
                    saved[name] = self.envoy.get(name).output.save()
                tracer.stop()
        return {
            name: saved[name][0] if isinstance(saved[name], (tuple, list)) else saved[name] for name in self.layer_names
        }


def _packages(model: object) -> set[str]:
    """The top-level packages that define the classes of ``model``'s type and its bases."""
    return {cls.__module__.partition(".")[0] for cls in type(model).__mro__}


def library_source(
    model: Any,
    layer: Layers,
    sequences: Sequences,
    batch_tokens: int,
    *,
    site: Site = "resid",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> SequenceSource:
    """The source reading ``model`` at ``layer`` over ``sequences``, by the kind of model:
    :class:`LensSource` for a TransformerLens model with hooks (``HookedTransformer``, ``TransformerBridge``),
    :class:`NNsightSource` for an nnsight model, :class:`pyfloor.sources.TeacherSource` for a
    Hugging Face causal LM (any other ``torch.nn.Module``). The kind is read from the classes'
    modules, so no library is imported. TypeError for any other object."""
    packages = _packages(model)
    kind: type[LensSource] | type[NNsightSource] | type[TeacherSource] | None = None
    if "transformer_lens" in packages:
        if hasattr(model, "run_with_hooks") and hasattr(model, "hook_dict"):
            kind = LensSource
    elif "nnsight" in packages:
        kind = NNsightSource
    elif isinstance(model, nn.Module):
        kind = TeacherSource
    if kind is None:
        raise TypeError(
            "a teacher must be a TransformerLens HookedTransformer or TransformerBridge, an nnsight model (NNsight, "
            "LanguageModel, TransformersModel) wrapping a Hugging Face model, or a Hugging Face causal "
            f"LM (a torch.nn.Module); got {type(model).__module__}.{type(model).__qualname__}"
        )
    return kind(model, layer, sequences, batch_tokens, site=site, device=device, dtype=dtype)
