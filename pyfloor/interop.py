"""SAEs from other libraries: conversion, the hook an SAE was trained on, and SAELens' training statistics.

* :func:`as_sae` turns whatever SAE a caller holds into a pyfloor :class:`~pyfloor.sae.SAE`: a pyfloor
  SAE as it is, a SAELens SAE (``StandardSAE``, ``JumpReLUSAE``, ``TopKSAE``, their training
  variants, or the older ``sae_lens.SAE``) through :func:`from_saelens`, an EleutherAI sparsify
  ``SparseCoder`` (alias ``Sae``) through :func:`from_sparsify`. Library objects are recognised by
  the module their class comes from, so pyfloor never imports either library itself. The converters
  share their folding with :func:`pyfloor.sae.load_sae`'s directory readers, and fill
  :attr:`SAE.metadata <pyfloor.sae.SAE.metadata>` with what the library records (hook, model,
  training settings).
* :func:`hook_site` reads the recorded hook in pyfloor's convention — layer i, site ``"resid"`` is
  the residual stream after transformer block i, site ``"mlp"`` the output of block i's MLP — and
  :func:`check_hook` refuses to apply an SAE to another layer or site.
* :func:`measurement_from_sparsity` gives F, L0 and α from the ``sparsity.safetensors`` a SAELens
  training checkpoint holds (firing frequencies only: no importances, hence no floors).

:func:`pyfloor.sae.resolve_sae` and :func:`pyfloor.sae.sae_sha256` are served here too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from . import _checks
from ._io import CheckpointError
from .sae import SAE, _saelens_state_to_sae, _sparsify_state_to_sae, resolve_sae, sae_sha256
from .stats import DEFAULT_ALIVE_THRESHOLD, Measurement

__all__ = [
    "SAELike",
    "as_sae",
    "from_saelens",
    "from_sparsify",
    "hook_site",
    "check_hook",
    "measurement_from_sparsity",
    "resolve_sae",
    "sae_sha256",
    "EMBEDDINGS",
    "SPARSITY_FILENAME",
]

#: What :func:`as_sae` accepts: a pyfloor SAE, a SAELens SAE or a sparsify SparseCoder.
SAELike: TypeAlias = SAE | object

#: The top-level package of each library whose SAE objects pyfloor converts, and its name in metadata.
_LIBRARIES = {"sae_lens": "saelens", "sparsify": "sparsify"}

#: :func:`hook_site` of an SAE trained on the embeddings (TransformerLens' ``blocks.0.hook_resid_pre``,
#: ``hook_embed``, or an embedding module): no block's output, so no layer and site pyfloor reads match it.
EMBEDDINGS: tuple[int, str] = (-1, "embed")


def _kind(obj: object) -> str:
    """``module.Class`` of ``obj``, for messages."""
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _library_of(obj: object) -> str | None:
    """ "saelens" or "sparsify" where ``obj``'s class, or a class it derives from, comes from that library."""
    for cls in type(obj).__mro__:
        library = _LIBRARIES.get(cls.__module__.partition(".")[0])
        if library is not None:
            return library
    return None


def _object_parts(obj: object, library: str) -> tuple[Mapping[str, Tensor], Any]:
    """The state dict and config object of a library's SAE; TypeError where it has no such parts."""
    state_dict, cfg = getattr(obj, "state_dict", None), getattr(obj, "cfg", None)
    if _library_of(obj) != library or not callable(state_dict) or not callable(getattr(cfg, "to_dict", None)):
        raise TypeError(f"expected a {library} SAE object (with .cfg.to_dict() and .state_dict()); got {_kind(obj)}")
    return state_dict(), cfg


def _state_and_cfg(
    obj: object, cfg: Mapping[str, object] | None, library: str
) -> tuple[Mapping[str, Tensor], Mapping[str, object]] | None:
    """(state, cfg) when ``obj`` is a state dict given with its config; None for a library object
    (then ``cfg`` must be None). TypeError for a state dict without a config mapping, or a config
    given with an object."""
    if not isinstance(obj, Mapping):
        if cfg is not None:
            raise TypeError(f"cfg goes with a state dict; a {library} SAE object carries its own config")
        return None
    if not isinstance(cfg, Mapping):
        raise TypeError(
            f"a {library} state dict needs its config as a dict (cfg.json's contents); got cfg={type(cfg).__name__}"
        )
    return obj, cfg


def from_saelens(sae: object, cfg: Mapping[str, object] | None = None) -> SAE:
    """A pyfloor SAE equal to a SAELens SAE: same latents for the same activations.

    Parameters
    ----------
    sae : sae_lens SAE or mapping
        A SAELens SAE object (``StandardSAE``, ``JumpReLUSAE``, ``TopKSAE``, their training classes,
        or the older ``sae_lens.SAE``), or its state dict (``W_enc``, ``b_enc``, ``W_dec``, ``b_dec``,
        ``threshold`` for JumpReLU).
    cfg : mapping, optional
        With a state dict only: its config, as cfg.json holds it or ``sae.cfg.to_dict()`` gives it.

    Returns
    -------
    SAE
        In eval mode, on the weights' device and in their dtype, with the pre-bias and
        decoder-norm options folded in. ``metadata`` holds ``library``/``source`` "saelens",
        ``architecture``, ``hook_name``, ``hook_layer`` and ``model_name`` where recorded, the
        training settings SAELens records (``training``) and its whole config (``config``).

    Raises
    ------
    TypeError
        For an object that is not a SAELens SAE, a state dict without ``cfg``, or ``cfg`` with an object.
    ValueError
        For an architecture or option pyfloor does not read (gated, transcoders, activation
        normalisation, …), or weights that do not fit one SAE.
    """
    given = _state_and_cfg(sae, cfg, "saelens")
    if given is None:
        state, config = _object_parts(sae, "saelens")
        given = state, config.to_dict()
    return _saelens_state_to_sae(*given, source="saelens")


def from_sparsify(sae: object, cfg: Mapping[str, object] | None = None, *, hookpoint: str | None = None) -> SAE:
    """A pyfloor SAE equal to an EleutherAI sparsify SAE: same latents for the same activations.

    Parameters
    ----------
    sae : sparsify SparseCoder or mapping
        A ``sparsify.SparseCoder`` (``sparsify.Sae``) object, or its state dict
        (``encoder.weight``, ``encoder.bias``, ``W_dec``, ``b_dec``).
    cfg : mapping, optional
        With a state dict only: its config as cfg.json holds it (``k``, ``activation``, …).
    hookpoint : str, optional
        The module the SAE was trained on (``layers.12``: the key of the SAE in sparsify's trainer,
        and the name of its checkpoint sub-directory), recorded as ``metadata["hook_name"]``; by
        default a ``hookpoint`` or ``hook_name`` field of the config, where there is one.

    Returns
    -------
    SAE
        A top-k SAE in eval mode, on the weights' device and in their dtype; ``metadata`` holds
        ``library``/``source`` "sparsify", ``architecture`` "topk", ``hook_name`` where known and
        the config (``config``).

    Raises
    ------
    TypeError
        For an object that is not a sparsify SparseCoder, a state dict without ``cfg``, or ``cfg`` with an object.
    ValueError
        For a transcoder, a skip connection, a ``groupmax`` activation, an SAE without its decoder,
        or weights that do not fit one SAE.
    """
    given = _state_and_cfg(sae, cfg, "sparsify")
    if given is None:
        state, config = _object_parts(sae, "sparsify")
        given = state, {**config.to_dict(), "d_in": getattr(sae, "d_in", None)}  # as save_to_disk writes cfg.json
    return _sparsify_state_to_sae(*given, source="sparsify", hookpoint=hookpoint)


def as_sae(sae: SAELike) -> SAE:
    """``sae`` as a pyfloor SAE: a pyfloor SAE unchanged, a SAELens or sparsify SAE object converted
    (:func:`from_saelens`, :func:`from_sparsify`; a copy of its weights on the same device).

    Raises
    ------
    TypeError
        For anything else, naming the kinds accepted (a state dict goes to :func:`from_saelens` or
        :func:`from_sparsify` with its config).
    ValueError
        For a library SAE pyfloor cannot represent (see the converters).
    """
    if isinstance(sae, SAE):
        return sae
    library = _library_of(sae)
    if library == "saelens":
        return from_saelens(sae)
    if library == "sparsify":
        return from_sparsify(sae)
    raise TypeError(
        f"cannot use a {_kind(sae)} as an SAE: expected a pyfloor SAE, a sae_lens SAE (StandardSAE, JumpReLUSAE, "
        "TopKSAE or the older sae_lens.SAE) or a sparsify SparseCoder (Sae); for a state dict call "
        "pyfloor.interop.from_saelens(state, cfg) or from_sparsify(state, cfg)"
    )


# -- the hook an SAE was trained on --------------------------------------------------------------------
#: A TransformerLens hook inside a block: ``blocks.12.hook_resid_pre``, ``blocks.3.attn.hook_z``, …
_TL_HOOK = re.compile(r"blocks\.(\d+)\.((?:\w+\.)*hook_\w+)")
#: TransformerLens hooks of a block's output and of its MLP's output.
_TL_SITES = {"hook_resid_post": "resid", "hook_mlp_out": "mlp"}
#: A transformer block's module, or one inside it (Hugging Face and sparsify names): ``layers.12``,
#: ``model.layers.12``, ``gpt_neox.layers.12.mlp``, ``transformer.h.3``, …
_MODULE = re.compile(r"(?:[\w.]+\.)?(?:layers|layer|h|blocks)\.(\d+)(?:\.([\w.]+))?")
#: Hook and module names of the embeddings.
_EMBEDDING_NAMES = ("hook_embed", "hook_pos_embed", "embed_tokens", "embed_in", "wte", "embeddings")


def _site_of_hook(hook: str) -> tuple[int, str] | None:
    """(layer, site) of a hook or module name in pyfloor's convention (see :func:`hook_site`)."""
    if hook.rpartition(".")[2] in _EMBEDDING_NAMES:
        return EMBEDDINGS
    tl = _TL_HOOK.fullmatch(hook)
    if tl is not None:
        block, name = int(tl[1]), tl[2]
        if name == "hook_resid_pre":  # the stream entering block i is the one block i − 1 wrote
            return (block - 1, "resid") if block > 0 else EMBEDDINGS
        return block, _TL_SITES.get(name, name)
    module = _MODULE.fullmatch(hook)
    if module is not None:
        return int(module[1]), module[2] or "resid"
    return None


def hook_site(sae: SAELike) -> tuple[int, str] | None:
    """The (layer, site) in pyfloor's convention of the hook the SAE was trained on (``metadata["hook_name"]``).

    Layer i, site ``"resid"`` is the residual stream after block i; ``"mlp"`` is block i's MLP
    output. So TransformerLens' ``blocks.12.hook_resid_post`` is (12, "resid"), ``blocks.12.hook_resid_pre``
    (the stream *entering* block 12) is (11, "resid"), ``blocks.12.hook_mlp_out`` is (12, "mlp");
    module paths (sparsify hookpoints, Hugging Face names) ``layers.12`` / ``model.layers.12`` are
    (12, "resid") and ``layers.12.mlp`` / ``gpt_neox.layers.12.mlp`` (12, "mlp"). Other hooks of a
    block keep their name as the site (``blocks.3.hook_resid_mid`` is (3, "hook_resid_mid"),
    ``layers.3.self_attn`` (3, "self_attn")), and the embeddings (``blocks.0.hook_resid_pre``,
    ``hook_embed``, ``embed_tokens``) are :data:`EMBEDDINGS`: none of these is a site pyfloor reads,
    so :func:`check_hook` refuses them. None where no hook is recorded or the name is not recognised.
    """
    hook = as_sae(sae).metadata.get("hook_name")
    return _site_of_hook(hook.strip()) if isinstance(hook, str) else None


def _describe(site: tuple[int, str]) -> str:
    """A (layer, site) in words."""
    layer, name = site
    if site == EMBEDDINGS:
        return "the embeddings, before block 0 (no block's output: no layer and site match it)"
    if name == "resid":
        return f"the residual stream after block {layer} (layer {layer}, site 'resid')"
    if name == "mlp":
        return f"the output of block {layer}'s MLP (layer {layer}, site 'mlp')"
    return f"block {layer}'s {name} (not a site pyfloor reads: those are 'resid' and 'mlp')"


def check_hook(sae: SAELike, layer: int, site: str, *, override: bool = False) -> str | None:
    """Check that the SAE was trained where it is to be applied: block ``layer``'s ``site`` (see :func:`hook_site`).

    Returns
    -------
    str or None
        None where the recorded hook matches, or where none is recorded or it is not recognised;
        with ``override``, a warning naming the mismatch instead of raising.

    Raises
    ------
    ValueError
        Where the hook is another layer or site: the message names the SAE's hook, what it is in
        pyfloor's convention, what was asked for, and the override (``--ignore-hook``,
        ``override=True``). Also for a negative ``layer`` or a ``site`` other than "resid" or "mlp".
    """
    _checks.count(layer, "layer")
    _checks.one_of(site, "site", ("resid", "mlp"))
    sae = as_sae(sae)
    found = hook_site(sae)
    if found is None or found == (layer, site):
        return None
    hook = sae.metadata["hook_name"]
    note = (
        " (TransformerLens' hook_resid_pre of block i is the stream after block i − 1)"
        if "hook_resid_pre" in str(hook)
        else ""
    )
    problem = (
        f"the SAE was trained on {hook!r}, which is {_describe(found)}{note}, but it is applied to "
        f"{_describe((layer, site))}"
    )
    if not override:
        raise ValueError(f"{problem}; measure at the SAE's own layer and site, or pass --ignore-hook (override=True)")
    return f"{problem}: measuring anyway (--ignore-hook / override=True)"


# -- SAELens' training statistics ------------------------------------------------------------------------
#: The file of per-latent firing frequencies in a SAELens training checkpoint or saved SAE.
SPARSITY_FILENAME = "sparsity.safetensors"
#: What SAELens adds to each frequency before taking log10 (so that dead latents give −10, not −∞).
_SPARSITY_EPS = 1e-10
#: How far above 0 a log10 frequency may lie (a latent firing on every token: log10(1 + ε) in float32).
_LOG_ONE_TOLERANCE = 1e-6


def _sparsity_frequencies(path: Path) -> NDArray[np.float64]:
    """The firing frequencies [m] in a SAELens sparsity file (log10(freq + 1e-10) under ``sparsity``)."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path}: unreadable or corrupt safetensors file ({exc})") from exc
    log_freq = tensors.get("sparsity")
    if log_freq is None:
        raise CheckpointError(
            f"{path}: no tensor 'sparsity' (SAELens writes each latent's log10 firing frequency under that name)"
        )
    if log_freq.ndim != 1 or log_freq.numel() == 0 or not log_freq.is_floating_point():
        raise CheckpointError(
            f"{path}: 'sparsity' must be a non-empty 1-D float tensor; got {log_freq.dtype} {tuple(log_freq.shape)}"
        )
    log10 = log_freq.to(torch.float64).numpy()
    if not np.isfinite(log10).all():
        raise CheckpointError(f"{path}: 'sparsity' holds NaN or ±Inf (an empty feature-sampling window gives 0/0)")
    if (log10 > _LOG_ONE_TOLERANCE).any():
        raise CheckpointError(f"{path}: 'sparsity' holds log10 frequencies above 0 (frequencies above 1)")
    freq: NDArray[np.float64] = np.clip(10.0**log10 - _SPARSITY_EPS, 0.0, 1.0)
    return freq


def measurement_from_sparsity(
    path: str | os.PathLike[str], *, n_tokens: int | None = None, alive_threshold: float = DEFAULT_ALIVE_THRESHOLD
) -> Measurement:
    """F, L0, α (and so g and d*) by the paper's definitions from a SAELens ``sparsity.safetensors``.

    SAELens' trainer writes, with each checkpoint and the final SAE, each latent's firing frequency
    (its fraction of tokens with a non-zero latent) as log10(freq + 1e-10). F counts the latents with
    freq > ``alive_threshold``, L0 = Σ freq (over every latent), α = 1 − L0/F.

    Caveat: those frequencies cover only the trainer's current feature-sampling window (the steps
    since its last reset, ``feature_sampling_window`` steps at most, or fewer), counted while the SAE
    was still training — not a measurement pass of the finished SAE over a fixed token set. The file
    holds no importances E[z²], so the measurement has none and predicts no floors
    (:meth:`Measurement.floor` raises); its ``source`` and ``notes`` say so.

    Parameters
    ----------
    path : path
        The file, or a directory that holds it (a checkpoint's or a saved SAE's).
    n_tokens : int, optional
        The tokens of the window, where known (recorded as provenance; the file does not hold it).
    alive_threshold : float
        In [0, 1).

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    ValueError
        For a file without a usable ``sparsity`` tensor (:class:`~pyfloor.stats.CheckpointError`),
        a bad threshold or token count, no alive latent, or L0 ≥ F.
    """
    file = Path(path)
    file = file / SPARSITY_FILENAME if file.is_dir() else file
    thr = _checks.fraction(alive_threshold, "alive_threshold")
    tokens = None if n_tokens is None else _checks.count(n_tokens, "n_tokens", minimum=1)
    freq = _sparsity_frequencies(file)
    n_alive, l0 = int((freq > thr).sum()), float(freq.sum())
    if n_alive == 0:
        raise ValueError(f"{file}: no latent fires on more than a fraction {thr:g} of the window's tokens; F = 0")
    if l0 >= n_alive:
        raise ValueError(f"{file}: L0 = {l0:.4g} is not below F = {n_alive} alive latents: α = 1 − L0/F would be ≤ 0")
    return Measurement(
        n_features=n_alive,
        mean_l0=l0,
        alpha=1.0 - l0 / n_alive,
        n_tokens=tokens,
        n_latents=int(freq.size),
        alive_threshold=thr,
        source=f"{file} (SAELens firing frequencies over its trainer's last feature-sampling window, while training)",
        notes=(
            "F, L0 and α from SAELens' sparsity.safetensors: firing frequencies over the trainer's last "
            "feature-sampling window, counted while the SAE was training, not a measurement pass",
            "importances unavailable: the file holds no E[z²], so no floors are predicted",
        ),
    )
