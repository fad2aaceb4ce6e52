"""Sparse autoencoders: weights, the reference encode/decode, files, and training.

An SAE maps an activation x ∈ R^d to latents z ∈ R^m and back:

    pre = (x − b_dec) @ W_enc + b_enc          (b_dec is the learned pre-bias)
    z   = act(pre)                             ReLU, JumpReLU(θ) or top-k
    x̂   = z @ W_dec + b_dec

with ``W_enc`` [d, m] and ``W_dec`` [m, d]. Top-k keeps the k largest pre-activations of each
token (ties broken towards the lowest latent index) and applies ReLU to them; JumpReLU keeps
``pre`` where ``pre > θ_i`` (θ ≥ 0).

Every SAE carries ``metadata``, a JSON-ready dict of where it came from, saved in its file: ``library``
and ``source`` (the library, or the directory it was read from), ``architecture``, ``hook_name`` (the
hook or module it was trained on, as its library names it), ``hook_layer`` and ``model_name`` where
recorded, ``training`` (the training settings: pyfloor's :class:`TrainConfig`, or those the library
recorded), ``config`` (another library's whole config), and ``hub_id``, ``hub_subfolder`` and
``revision`` (the commit) for an SAE resolved from the Hugging Face cache.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple, NoReturn, TypeGuard

import torch
from torch import Tensor, nn

from . import _checks
from ._io import CheckpointError, json_ready, load_tagged, save_tagged

__all__ = [
    "SAE",
    "SAEOutput",
    "Activation",
    "TrainConfig",
    "TrainStep",
    "train_sae",
    "train_sae_family",
    "topk_codes",
    "load_sae",
    "resolve_sae",
    "sae_sha256",
]

Activation = Literal["relu", "jumprelu", "topk"]
ACTIVATIONS: tuple[Activation, ...] = ("relu", "jumprelu", "topk")
SAE_FORMAT = "pyfloor.SAE"
SAE_VERSION = 1


def is_activation(value: object) -> TypeGuard[Activation]:
    """Whether ``value`` names an SAE activation: "relu", "jumprelu" or "topk"."""
    return value in ACTIVATIONS


class SAEOutput(NamedTuple):
    """Reconstruction and dense latents of a batch (what :meth:`SAE.forward` returns)."""

    x_hat: Tensor  #: [..., d_in], the input's dtype
    z: Tensor  #: [..., n_latents], float32 or wider


def topk_codes(pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Indices and ReLU'd values of the k largest entries of each row of ``pre`` [..., m].

    Ties are broken towards the lowest index (a stable descending sort), so the result is
    deterministic on every device.

    Returns
    -------
    indices : Tensor
        int64 [..., k], largest pre-activation first.
    values : Tensor
        ``pre``'s dtype [..., k], clamped at 0 (a top-k latent with a negative pre-activation is 0).
    """
    values, indices = torch.sort(pre, dim=-1, descending=True, stable=True)
    return indices[..., :k], values[..., :k].clamp_min(0)


class SAE(nn.Module):
    """A sparse autoencoder with ReLU, JumpReLU or top-k latents (see the module docstring).

    Parameters
    ----------
    d_in, n_latents : int
        Input width d and number of latents m (both >= 1).
    activation : {"relu", "jumprelu", "topk"}
        The latent activation; "jumprelu" adds a ``threshold`` parameter θ [m] (zeros, not trained
        by :func:`train_sae`), "topk" needs ``k``.
    k : int, optional
        Latents kept per token, 1 <= k <= n_latents; only for "topk".
    dtype, device
        Of the weights ``W_enc`` [d, m], ``b_enc`` [m], ``W_dec`` [m, d], ``b_dec`` [d].
    metadata : mapping, optional
        Provenance (see the module docstring), copied into :attr:`metadata`; it must be
        JSON-serialisable by the time the SAE is saved.

    Raises
    ------
    ValueError
        For an unknown activation, a size below 1, or a k that is missing, out of range or given
        for another activation.
    """

    threshold: nn.Parameter | None
    metadata: dict[str, object]

    def __init__(
        self,
        d_in: int,
        n_latents: int,
        activation: Activation = "relu",
        *,
        k: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        metadata: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__()
        _checks.one_of(activation, "activation", ACTIVATIONS)
        d_in, n_latents = _checks.count(d_in, "d_in", minimum=1), _checks.count(n_latents, "n_latents", minimum=1)
        if activation == "topk":
            if k is None or _checks.count(k, "k", minimum=1) > n_latents:
                raise ValueError(f"top-k SAE needs 1 <= k <= n_latents ({n_latents}); got k={k!r}")
            k = int(k)
        elif k is not None:
            raise ValueError(f"k is only meaningful for activation='topk'; got k={k} with {activation!r}")
        self.d_in, self.n_latents, self.activation, self.k = int(d_in), int(n_latents), activation, k
        self.metadata = dict(metadata or {})
        self.W_enc = nn.Parameter(torch.empty(d_in, n_latents, dtype=dtype, device=device))
        self.b_enc = nn.Parameter(torch.zeros(n_latents, dtype=dtype, device=device))
        self.W_dec = nn.Parameter(torch.empty(n_latents, d_in, dtype=dtype, device=device))
        self.b_dec = nn.Parameter(torch.zeros(d_in, dtype=dtype, device=device))
        self.threshold = (
            nn.Parameter(torch.zeros(n_latents, dtype=dtype, device=device), requires_grad=False)
            if activation == "jumprelu"
            else None
        )
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Random unit-norm decoder rows and the encoder tied to the decoder's transpose."""
        with torch.no_grad():
            w = torch.randn(self.n_latents, self.d_in, generator=generator, dtype=torch.float32)
            w /= w.norm(dim=1, keepdim=True)
            self.W_dec.copy_(w)
            self.W_enc.copy_(w.T)
            self.b_enc.zero_()
            self.b_dec.zero_()

    def extra_repr(self) -> str:
        """The shape and activation, shown in ``repr(sae)``."""
        k = f", k={self.k}" if self.k is not None else ""
        return f"d_in={self.d_in}, n_latents={self.n_latents}, activation={self.activation!r}{k}"

    def jumprelu_threshold(self) -> Tensor:
        """The JumpReLU thresholds θ [n_latents]; ValueError for an SAE without them (not JumpReLU)."""
        if self.threshold is None:
            raise ValueError(f"a {self.activation!r} SAE has no JumpReLU thresholds (needs activation='jumprelu')")
        return self.threshold

    def margins(self, activation: Activation | None = None) -> Tensor | None:
        """Upper end u_i of each latent's margin band, the active values c_i < z_i ≤ u_i just above its cut.

        A latent whose cut is c_i (0 for ReLU, θ_i for JumpReLU) fires when pre_i > c_i. Along its
        decoder direction pre_i = s_i·μ + b_enc,i, so it fires when the token's magnitude μ exceeds
        μ_i = (c_i − b_enc,i)/s_i; tokens with 0 < μ ≤ μ_i carry the feature but are cut off. The band
        μ_i < μ ≤ 2μ_i is c_i < z_i ≤ u_i = 2c_i − b_enc,i (independent of s_i); where c_i − b_enc,i ≤ 0
        nothing is cut off and u_i = c_i (an empty band). None for top-k, whose cut moves per token.
        ``activation`` overrides the SAE's own (as an encode may).
        """
        act = activation or self.activation
        if act == "topk":
            return None
        b = self.b_enc.detach().float()
        cut = self.jumprelu_threshold().detach().float() if act == "jumprelu" else torch.zeros_like(b)
        return cut + (cut - b).clamp_min(0)

    def _top_k(self) -> int:
        """k of a top-k SAE; ValueError for an SAE without one."""
        if self.k is None:
            raise ValueError(f"a {self.activation!r} SAE has no k (needs activation='topk')")
        return self.k

    # -- the maps -------------------------------------------------------------------------------
    def check_input(self, x: Tensor) -> None:
        """Raise ValueError unless ``x`` is a floating tensor [..., d_in]."""
        if not isinstance(x, Tensor):
            raise TypeError(f"expected a torch.Tensor; got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"activations must be floating point; got dtype {x.dtype}")
        if x.ndim == 0 or x.shape[-1] != self.d_in:
            raise ValueError(
                f"activations have width {x.shape[-1] if x.ndim else 'scalar'} but the SAE expects d_in = {self.d_in}"
            )

    def pre_activations(self, x: Tensor) -> Tensor:
        """(x − b_dec) @ W_enc + b_enc [..., n_latents] of x [..., d_in], computed in float32 or wider
        (the promotion of x's dtype and float32; the weights are cast to it)."""
        dt = torch.promote_types(x.dtype, torch.float32)
        return (x.to(dt) - self.b_dec.to(dt)) @ self.W_enc.to(dt) + self.b_enc.to(dt)

    def activate(self, pre: Tensor, *, exact_ties: bool = True) -> Tensor:
        """Dense latents z = act(pre).

        With ``exact_ties=False`` top-k uses ``torch.topk``, faster but with an unspecified choice
        among tied pre-activations (fine for training).
        """
        if self.activation == "relu":
            return torch.relu(pre)
        if self.activation == "jumprelu":
            return pre * (pre > self.jumprelu_threshold().to(pre.dtype))
        k = self._top_k()
        if exact_ties:
            idx, val = topk_codes(pre, k)
        else:
            val, idx = pre.topk(k, dim=-1)
            val = val.clamp_min(0)
        return torch.zeros_like(pre).scatter_(-1, idx, val)

    def encode(self, x: Tensor) -> Tensor:
        """Dense latents z [..., n_latents] of activations x [..., d_in] (float32 or wider).

        Raises TypeError for a non-tensor and ValueError for a non-floating tensor or a width other than d_in.
        """
        self.check_input(x)
        return self.activate(self.pre_activations(x))

    def decode(self, z: Tensor) -> Tensor:
        """Reconstruction x̂ = z @ W_dec + b_dec [..., d_in] of latents z [..., n_latents], in the weights' dtype."""
        return z.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> SAEOutput:
        """Encode and decode x [..., d_in]: the reconstruction (in x's dtype) and the dense latents."""
        z = self.encode(x)
        return SAEOutput(self.decode(z).to(x.dtype), z)

    def check_weights(self) -> None:
        """Raise ValueError if a weight is NaN/±Inf or a JumpReLU threshold is negative."""
        for name, p in self.state_dict().items():
            if not torch.isfinite(p).all():
                raise ValueError(f"SAE weight {name} holds NaN or ±Inf")
        if self.threshold is not None and (self.threshold < 0).any():
            raise ValueError("JumpReLU thresholds must be >= 0 (latents would be negative)")

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale each decoder row to unit norm (the paper's recipe does this every step)."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    # -- files ----------------------------------------------------------------------------------
    def config(self) -> dict[str, object]:
        """The hyper-parameters that rebuild this SAE's shape."""
        return {"d_in": self.d_in, "n_latents": self.n_latents, "activation": self.activation, "k": self.k}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write weights, config and :attr:`metadata` (less its ``path``) to a safetensors file (pyfloor's own SAE format), atomically.

        Raises ValueError if :attr:`metadata` is not a JSON object (str keys; str, finite numbers,
        bools, None, lists and dicts as values).
        """
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_tagged(
            path,
            tensors,
            kind=SAE_FORMAT,
            version=SAE_VERSION,
            metadata={"config": json.dumps(self.config()), "metadata": _metadata_json(_saved_metadata(self.metadata))},
            framework="pt",
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, device: torch.device | str | None = None) -> SAE:
        """Read a file written by :meth:`save`, in the file's dtype, onto ``device`` if given.

        Files written before SAEs carried metadata load with an empty :attr:`metadata`.

        Raises
        ------
        CheckpointError
            (a ValueError) For a missing, foreign, newer, corrupt or inconsistent file, or non-finite weights.
        """
        tensors, meta = load_tagged(path, kind=SAE_FORMAT, version=SAE_VERSION, what="SAE file", framework="pt")
        try:
            cfg = json.loads(meta["config"])
            shape = tuple(tensors["W_enc"].shape)
            if shape != (cfg["d_in"], cfg["n_latents"]):  # before allocating an SAE of the config's size
                raise CheckpointError(
                    f"{path}: W_enc is {shape} but the config says d_in = {cfg['d_in']!r}, "
                    f"n_latents = {cfg['n_latents']!r}"
                )
            sae = cls(
                cfg["d_in"],
                cfg["n_latents"],
                cfg["activation"],
                k=cfg["k"],
                dtype=tensors["W_enc"].dtype,
                metadata=_metadata_from_json(meta.get("metadata", "{}")),
            )
            sae.load_state_dict(tensors)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # ValueError: a config out of range (k = inf, …)
            raise CheckpointError(f"{path}: inconsistent SAE file ({exc})") from exc
        sae.check_weights()
        return sae.to(device) if device is not None else sae


def _saved_metadata(metadata: dict[str, object]) -> object:
    """The metadata a file keeps: all but ``path``, which names where an SAE was last read from, not the new file."""
    return {k: v for k, v in metadata.items() if k != "path"} if isinstance(metadata, dict) else metadata


def _metadata_json(metadata: object) -> str:
    """``metadata`` as JSON text; ValueError unless it is a dict of JSON values without NaN or ±Inf."""
    if not isinstance(metadata, dict):
        raise ValueError(f"SAE metadata must be a dict; got {type(metadata).__name__}")
    try:
        return json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(
            f"SAE metadata is not JSON-serialisable ({exc}): keep it to str keys and str, finite numbers, "
            "bools, None, lists and dicts"
        ) from exc


def _metadata_from_json(text: str) -> dict[str, object]:
    """The metadata dict of a pyfloor SAE file's JSON text; ValueError for anything :func:`_metadata_json` refuses."""
    try:
        metadata = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"metadata is not JSON ({exc})") from exc
    if not isinstance(metadata, dict):
        raise ValueError(f"metadata must be a JSON object; got {type(metadata).__name__}")
    _metadata_json(metadata)  # refuses NaN and ±Inf, which json.loads accepts
    return metadata


def sae_sha256(sae: SAE) -> str:
    """Hex SHA-256 of an SAE's weights: each state-dict entry's name and raw bytes, in name order.

    Two SAEs have the same digest exactly when they hold the same tensors (names, dtypes, values);
    :attr:`SAE.metadata` does not enter it.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(sae.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# -- other libraries' checkpoints ---------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, object]:
    """The JSON object in ``path``; CheckpointError for a file that is not one."""
    try:
        obj = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: not a JSON config ({exc})") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a JSON object; got {type(obj).__name__}")
    return obj


def _read_dir(path: Path, weights_name: str) -> tuple[_Config, _Tensors]:
    """cfg.json and the tensors of ``weights_name`` in an SAE directory."""
    from safetensors.torch import load_file

    cfg_path, weights = path / "cfg.json", path / weights_name
    for p in (cfg_path, weights):
        if not p.is_file():
            raise FileNotFoundError(f"{path}: missing {p.name}")
    cfg = _read_json(cfg_path)
    try:
        tensors = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{weights}: unreadable or corrupt safetensors file ({exc})") from exc
    return _Config(cfg, str(cfg_path)), _Tensors(tensors, str(weights))


def _integer(value: object, what: str) -> int:
    """``value`` if it is an int (not a bool); CheckpointError naming ``what`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise CheckpointError(f"{what} must be an integer; got {value!r}")
    return value


class _Config(dict[str, object]):
    """An SAE's config (a cfg.json, or a library's config as a dict) named by ``label``: a missing or
    non-integer key raises CheckpointError naming it."""

    def __init__(self, cfg: Mapping[str, object], label: str) -> None:
        super().__init__(cfg)
        self.label = label

    def __missing__(self, key: str) -> NoReturn:
        raise CheckpointError(f"{self.label} lacks {key!r}")

    def integer(self, key: str) -> int:
        """``self[key]`` as an int."""
        return _integer(self[key], f"{self.label}: {key}")


class _Tensors(dict[str, Tensor]):
    """An SAE's tensors (a weights file, or a state dict) named by ``label``: a missing one raises
    CheckpointError naming it."""

    def __init__(self, tensors: Mapping[str, Tensor], label: str) -> None:
        super().__init__(tensors)
        self.label = label

    def __missing__(self, key: str) -> NoReturn:
        raise CheckpointError(f"{self.label}: no tensor {key!r}")


def _as_config(cfg: Mapping[str, object], label: str) -> _Config:
    """``cfg`` as a :class:`_Config` (a directory's keeps its file's name)."""
    return cfg if isinstance(cfg, _Config) else _Config(cfg, label)


def _as_tensors(state: Mapping[str, Tensor], label: str) -> _Tensors:
    """``state`` as :class:`_Tensors` (a directory's keep their file's name)."""
    return state if isinstance(state, _Tensors) else _Tensors(state, label)


def _check_weights(W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor, threshold: Tensor | None) -> None:
    """Raise ValueError unless the weights are floating point with the shapes of one SAE."""
    for name, t in (("W_enc", W_enc), ("b_enc", b_enc), ("W_dec", W_dec), ("b_dec", b_dec), ("threshold", threshold)):
        if t is not None and not t.is_floating_point():
            raise ValueError(f"SAE weight {name} must be floating point; got {t.dtype}")
    if W_enc.ndim != 2:
        raise ValueError(f"SAE weight W_enc must be 2-D [d_in, n_latents]; got shape {tuple(W_enc.shape)}")
    d, m = W_enc.shape
    if threshold is not None and threshold.shape != (m,):
        raise ValueError(f"JumpReLU threshold has shape {tuple(threshold.shape)}; expected ({m},)")
    if W_dec.shape != (m, d) or b_enc.shape != (m,) or b_dec.shape != (d,):
        raise ValueError(
            f"inconsistent SAE weights: W_enc {tuple(W_enc.shape)}, b_enc {tuple(b_enc.shape)}, "
            f"W_dec {tuple(W_dec.shape)}, b_dec {tuple(b_dec.shape)}"
        )


def _from_tensors(
    activation: Activation,
    k: int | None,
    W_enc: Tensor,
    b_enc: Tensor,
    W_dec: Tensor,
    b_dec: Tensor,
    threshold: Tensor | None = None,
    metadata: Mapping[str, object] | None = None,
) -> SAE:
    """An SAE (eval mode, W_enc's dtype and device) holding copies of these weights; ValueError if they do not fit."""
    _check_weights(W_enc, b_enc, W_dec, b_dec, threshold)
    d, m = W_enc.shape
    sae = SAE(d, m, activation, k=k, dtype=W_enc.dtype, device=W_enc.device, metadata=metadata)
    with torch.no_grad():
        for name, value in (("W_enc", W_enc), ("b_enc", b_enc), ("W_dec", W_dec), ("b_dec", b_dec)):
            getattr(sae, name).copy_(value)
        if threshold is not None:
            sae.jumprelu_threshold().copy_(threshold)
    sae.check_weights()
    return sae.eval()


def _provenance(fields: Mapping[str, object]) -> dict[str, object]:
    """``fields`` less the unknown ones (None or empty), as JSON values: numpy values and tuples as
    :func:`pyfloor._io.json_ready` makes them, NaN/±Inf as None, anything JSON has no type for as its str()."""
    known = {k: v for k, v in fields.items() if v is not None and v != {}}
    out: dict[str, object] = json.loads(json.dumps(json_ready(known), default=str))
    return out


_SAELENS_KINDS: dict[str, Activation] = {"standard": "relu", "jumprelu": "jumprelu", "topk": "topk"}
#: Training settings SAELens records: in a 6.x config's ``metadata`` (``training_architecture*``, the
#: runner's context and dataset) or at the top level of an older config (the whole runner config).
_SAELENS_TRAINING_KEYS = (
    "training_architecture",
    "training_architecture_details",
    "sae_lens_training_version",
    "context_size",
    "dataset_path",
    "lr",
    "l1_coefficient",
    "lp_norm",
    "training_tokens",
    "train_batch_size_tokens",
    "feature_sampling_window",
    "dead_feature_window",
    "dead_feature_threshold",
    "seed",
)


def _saelens_architecture(cfg: _Config) -> str:
    """The SAELens architecture of ``cfg``; a config older than SAELens 6 names a top-k SAE "standard"
    with ``activation_fn_str`` "topk". ValueError for one pyfloor does not read."""
    arch = cfg.get("architecture", "standard")
    act = cfg.get("activation_fn_str", cfg.get("activation_fn"))
    if arch == "standard" and act == "topk":
        arch = "topk"
    elif act not in (None, "relu", "topk"):
        raise ValueError(f"{cfg.label}: SAELens activation_fn {act!r} is not supported (supported: relu, topk)")
    if not isinstance(arch, str) or arch not in _SAELENS_KINDS:
        raise ValueError(
            f"{cfg.label}: SAELens architecture {arch!r} is not supported (supported: {', '.join(_SAELENS_KINDS)})"
        )
    return arch


def _saelens_k(cfg: _Config) -> int:
    """k of a SAELens top-k config: ``k``, or ``activation_fn_kwargs.k`` in a config older than SAELens 6."""
    kwargs = cfg.get("activation_fn_kwargs")
    if "k" not in cfg and isinstance(kwargs, dict) and "k" in kwargs:
        return _integer(kwargs["k"], f"{cfg.label}: activation_fn_kwargs.k")
    return cfg.integer("k")


def _saelens_metadata(cfg: _Config, arch: str, source: str) -> dict[str, object]:
    """The provenance a SAELens config records (see the module docstring); a 6.x config keeps it in
    ``metadata``, an older one at its top level (``hook_point`` for the hook)."""
    inner = cfg.get("metadata")
    recorded = {**cfg, **inner} if isinstance(inner, dict) else dict(cfg)
    return _provenance(
        {
            "library": "saelens",
            "source": source,
            "architecture": arch,
            "hook_name": recorded.get("hook_name") or recorded.get("hook_point"),
            "hook_layer": recorded.get("hook_layer"),
            "model_name": recorded.get("model_name"),
            "training": {k: recorded[k] for k in _SAELENS_TRAINING_KEYS if recorded.get(k) is not None},
            "config": dict(cfg),
        }
    )


def _saelens_state_to_sae(state: Mapping[str, Tensor], cfg: Mapping[str, object], *, source: str = "saelens") -> SAE:
    """A pyfloor SAE from a SAELens state dict and config (standard, JumpReLU and top-k SAEs).

    The pre-bias option (``apply_b_dec_to_input``) and a top-k SAE's ``rescale_acts_by_decoder_norm``
    are folded into the weights, so the SAE's latents equal SAELens' own. Its :attr:`SAE.metadata`
    holds the config's provenance with ``source``. ValueError (CheckpointError for a missing key or
    tensor) for an architecture or option pyfloor does not read, or weights that do not fit one SAE.
    """
    cfg, t = _as_config(cfg, "the SAELens cfg"), _as_tensors(state, "the SAELens state dict")
    arch = _saelens_architecture(cfg)
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", None, False):
        raise ValueError(
            f"{cfg.label}: SAELens normalize_activations={norm!r} is not supported; fold it into the weights first"
        )
    if cfg.get("finetuning_scaling_factor"):
        raise ValueError(f"{cfg.label}: SAELens finetuning_scaling_factor is not supported")
    W_enc, b_enc, W_dec, b_dec = (t[n].clone() for n in ("W_enc", "b_enc", "W_dec", "b_dec"))
    threshold = t["threshold"] if "threshold" in t else (t["log_threshold"].exp() if "log_threshold" in t else None)
    threshold = threshold if arch == "jumprelu" else None  # only a JumpReLU SAE has one
    if arch == "jumprelu" and threshold is None:
        raise ValueError(f"{t.label}: JumpReLU SAE without a threshold tensor")
    _check_weights(W_enc, b_enc, W_dec, b_dec, threshold)  # before the folds below compute with them
    b_enc, W_dec, b_dec = (w.to(W_enc.dtype) for w in (b_enc, W_dec, b_dec))  # the SAE takes W_enc's dtype
    if cfg.get("rescale_acts_by_decoder_norm", False) and arch != "topk":
        raise ValueError(f"{cfg.label}: rescale_acts_by_decoder_norm is only supported for topk SAEs")
    if cfg.get("rescale_acts_by_decoder_norm", False):
        # SAELens scales pre-activations by ‖W_dec,i‖; fold that into the encoder and decoder.
        norms = W_dec.norm(dim=1)
        W_enc, b_enc, W_dec = W_enc * norms, b_enc * norms, W_dec / norms[:, None]
    if not cfg.get("apply_b_dec_to_input", True):
        # pre = x @ W_enc + b_enc = (x − b_dec) @ W_enc + (b_enc + b_dec @ W_enc)
        b_enc = b_enc + b_dec @ W_enc
    k = _saelens_k(cfg) if arch == "topk" else None
    metadata = _saelens_metadata(cfg, arch, source)
    return _from_tensors(_SAELENS_KINDS[arch], k, W_enc, b_enc, W_dec, b_dec, threshold, metadata)


def _sparsify_state_to_sae(
    state: Mapping[str, Tensor],
    cfg: Mapping[str, object],
    *,
    source: str = "sparsify",
    hookpoint: str | None = None,
    run_config: Mapping[str, object] | None = None,
) -> SAE:
    """A pyfloor SAE from an EleutherAI sparsify state dict and config (cfg.json: top-k SAEs).

    Its :attr:`SAE.metadata` holds ``source``, the ``hookpoint`` (else a ``hookpoint`` or ``hook_name``
    field of the config), the config, and from the training run's config (``run_config``, sparsify's
    config.json) the model's name and the training settings. ValueError (CheckpointError for a missing
    key or tensor) for a transcoder, a skip connection, an activation other than top-k, or weights
    that do not fit one SAE.
    """
    cfg, t = _as_config(cfg, "the sparsify cfg"), _as_tensors(state, "the sparsify state dict")
    if cfg.get("activation", "topk") != "topk":
        raise ValueError(f"{cfg.label}: sparsify activation {cfg.get('activation')!r} is not supported (only topk)")
    if cfg.get("transcode") or cfg.get("skip_connection") or "W_skip" in t:
        raise ValueError(f"{cfg.label}: a transcoder or skip connection is not an SAE of one layer; not supported")
    W = t["encoder.weight"]
    if W.ndim != 2:
        raise ValueError(f"{t.label}: encoder.weight must be 2-D [n_latents, d_in]; got shape {tuple(W.shape)}")
    run = {k: v for k, v in (run_config or {}).items() if k != "hf_token"}
    recorded = (hookpoint, cfg.get("hookpoint"), cfg.get("hook_name"))
    metadata = {
        "library": "sparsify",
        "source": source,
        "architecture": "topk",
        "hook_name": next((h for h in recorded if isinstance(h, str)), None),
        "model_name": run.get("model"),
        "training": run,
        "config": dict(cfg),
    }
    k = cfg.integer("k")
    return _from_tensors(
        "topk", k, W.T.contiguous(), t["encoder.bias"], t["W_dec"], t["b_dec"], None, _provenance(metadata)
    )


def _from_saelens(path: Path) -> SAE:
    """An SAELens directory (cfg.json + sae_weights.safetensors): standard, jumprelu and topk SAEs."""
    cfg, t = _read_dir(path, "sae_weights.safetensors")
    return _saelens_state_to_sae(t, cfg, source=str(path))


#: A module path with a numeric part (``layers.12``, ``gpt_neox.layers.3.mlp``), as sparsify names the
#: sub-directory of each hookpoint's SAE.
_HOOKPOINT = re.compile(r"[A-Za-z_]\w*(?:\.\w+)*\.\d+(?:\.\w+)*")


def _sparsify_run_config(run_dir: Path) -> dict[str, object] | None:
    """sparsify's config.json of a training run (a JSON object with its ``sae`` settings), which it
    writes above one sub-directory per hookpoint; None where there is none. Provenance only: an
    unreadable file there does not stop the SAE from loading."""
    path = run_dir / "config.json"
    if not path.is_file():
        return None
    try:
        run = _read_json(path)
    except CheckpointError:
        return None
    return run if isinstance(run.get("sae"), dict) else None


def _from_sparsify(path: Path) -> SAE:
    """An EleutherAI sparsify directory (cfg.json + sae.safetensors): top-k SAEs. The directory's
    name is the hookpoint where it reads as one (sparsify names each SAE's directory so)."""
    cfg, t = _read_dir(path, "sae.safetensors")
    run = _sparsify_run_config(path.parent)
    trained = run.get("hookpoints") if run is not None else None
    named = _HOOKPOINT.fullmatch(path.name) is not None or (isinstance(trained, list) and path.name in trained)
    return _sparsify_state_to_sae(t, cfg, source=str(path), hookpoint=path.name if named else None, run_config=run)


# -- SAEs by Hugging Face hub id ----------------------------------------------------------------------
class _HubRef(NamedTuple):
    """An SAE in the local Hugging Face cache."""

    repo_id: str  #: org/name
    subfolder: str  #: path inside the repository ("" for its root)
    revision: str  #: the commit hash of the cached snapshot


#: A Hugging Face user, organisation or repository name.
_HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_COMMIT = re.compile(r"[0-9a-f]{40}")


def _hub_spec(spec: str, revision: str | None) -> tuple[str, str, str] | None:
    """(repo id, sub-folder, revision) of ``org/name[/sub/path][@revision]``; None for anything that
    is not one. ValueError for an empty revision or one that disagrees with ``revision``."""
    text, at, tag = spec.partition("@")
    parts = text.split("/")
    if len(parts) < 2 or not all(_HUB_NAME.fullmatch(p) for p in parts[:2]):
        return None
    if any(p in ("", ".", "..") for p in parts[2:]):
        return None
    if at and not tag:
        raise ValueError(f"{spec}: empty revision after '@'")
    if at and revision is not None and tag != revision:
        raise ValueError(f"{spec}: the revision {tag!r} after '@' and revision={revision!r} disagree")
    return "/".join(parts[:2]), "/".join(parts[2:]), tag or revision or "main"


def _hub_cache(cache_dir: str | os.PathLike[str] | None) -> Path:
    """The Hugging Face hub cache: ``cache_dir``, else $HF_HUB_CACHE (or the older $HUGGINGFACE_HUB_CACHE),
    else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub or ~/.cache/huggingface/hub."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ
    hub = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if hub:
        return Path(hub).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def _not_cached(spec: str, repo_id: str, subfolder: str, revision: str, cache: Path, why: str) -> FileNotFoundError:
    """The error for an SAE that is neither a local path nor in the local hub cache: how to download it."""
    include = f" --include '{subfolder}/*'" if subfolder else ""
    rev = f" --revision {revision}" if revision != "main" else ""
    return FileNotFoundError(
        f"{spec}: no such local file or directory, and not in the local Hugging Face cache {cache} ({why}); "
        f"pyfloor reads the hub offline: download it first with `huggingface-cli download {repo_id}{include}{rev}`, "
        "or point cache_dir / $HF_HUB_CACHE at the cache that holds it"
    )


def _layout_snapshot(repo_id: str, revision: str, cache: Path) -> Path:
    """The snapshot folder of ``revision`` (a commit hash, or a branch or tag resolved through refs/)
    in the cache as huggingface_hub lays it out: models--org--name/{refs,snapshots}/…"""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    ref = repo / "refs" / revision
    commit = revision if _COMMIT.fullmatch(revision) else (ref.read_text().strip() if ref.is_file() else None)
    if commit is None:
        raise FileNotFoundError(f"no {ref}")
    snapshot = repo / "snapshots" / commit
    if not snapshot.is_dir():
        raise FileNotFoundError(f"no {snapshot}")
    return snapshot


def _cached_snapshot(repo_id: str, subfolder: str, revision: str, cache: Path) -> Path:
    """The cached snapshot folder of a repository's revision, never downloading: huggingface_hub's
    ``snapshot_download(local_files_only=True)`` where it is installed, else the cache layout read directly.
    FileNotFoundError (huggingface_hub's message) where it is not cached, or cached incompletely."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return _layout_snapshot(repo_id, revision, cache)
    patterns = [subfolder, f"{subfolder}/*"] if subfolder else None
    return Path(
        snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True, allow_patterns=patterns)
    )


def _resolve(
    spec: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None, revision: str | None
) -> tuple[Path, _HubRef | None]:
    """:func:`resolve_sae`'s path, and where it came from in the hub cache (None for a local path)."""
    path = Path(spec).expanduser()
    if path.exists():
        if revision is not None:
            raise ValueError(f"{spec} is a local path; a revision is only for hub ids")
        return path, None
    hub = _hub_spec(os.fspath(spec), revision)
    if hub is None:
        raise FileNotFoundError(f"{spec}: no such SAE file or directory (nor an org/name hub id)")
    repo_id, subfolder, rev = hub
    cache = _hub_cache(cache_dir)
    try:
        snapshot = _cached_snapshot(repo_id, subfolder, rev, cache)
    except FileNotFoundError as exc:
        raise _not_cached(os.fspath(spec), repo_id, subfolder, rev, cache, str(exc)) from exc
    found = snapshot / subfolder
    if not found.exists():
        raise _not_cached(
            os.fspath(spec), repo_id, subfolder, rev, cache, f"its snapshot {snapshot} has no {subfolder}"
        )
    return found, _HubRef(repo_id, subfolder, snapshot.name)


def resolve_sae(
    spec: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None, revision: str | None = None
) -> Path:
    """The local path of an SAE given as a path or a Hugging Face hub id, without any network access.

    Parameters
    ----------
    spec : str or os.PathLike
        A local file or directory (used as it is when it exists), or a hub id ``org/name``, with
        the sub-folder that holds one SAE (``org/name/sub/path``: SAELens releases and sparsify keep
        one SAE per sub-folder) and a revision (``…@v1``, a branch, tag or commit hash) if needed.
    cache_dir : path, optional
        The hub cache; default $HF_HUB_CACHE, $HF_HOME/hub or ~/.cache/huggingface/hub.
    revision : str, optional
        The revision, instead of ``@…`` in ``spec`` (default "main").

    Returns
    -------
    Path
        The path, or the folder (or file) inside the cached snapshot of the revision.

    Raises
    ------
    FileNotFoundError
        For a path that does not exist and is not a hub id, or a hub id that is not in the local
        cache (the message says how to download it).
    ValueError
        For a revision given with a local path, an empty ``@``, or two revisions that disagree.
    """
    return _resolve(spec, cache_dir, revision)[0]


def load_sae(
    path: str | os.PathLike[str],
    *,
    device: torch.device | str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    revision: str | None = None,
) -> SAE:
    """Load an SAE: a pyfloor ``.safetensors`` file, an SAELens directory (cfg.json +
    sae_weights.safetensors) or an EleutherAI sparsify directory (cfg.json + sae.safetensors),
    given as a local path or as a hub id in the local Hugging Face cache (see :func:`resolve_sae`
    for ``path``, ``cache_dir`` and ``revision``).

    SAELens standard (ReLU), JumpReLU and top-k SAEs are read with their pre-bias and decoder-norm
    options folded into the weights; sparsify SAEs are top-k. The SAE keeps the file's dtype and
    goes to ``device`` if given. Its :attr:`SAE.metadata` holds the provenance the files record,
    the ``path`` it was read from, and ``hub_id``, ``hub_subfolder`` and ``revision`` (the commit
    hash) for a hub id.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist and is not a cached hub id, or a directory lacks cfg.json or its weights file.
    ValueError
        For a directory of neither layout, an unsupported architecture or option, or weights
        that do not fit one SAE (:class:`CheckpointError`, a ValueError, for unreadable or corrupt files).
    """
    found, hub = _resolve(path, cache_dir, revision)
    if found.is_file():
        sae = SAE.load(found)
    elif (found / "sae_weights.safetensors").is_file():
        sae = _from_saelens(found)
    elif (found / "sae.safetensors").is_file():
        sae = _from_sparsify(found)
    else:
        raise ValueError(
            f"{found}: not an SAE directory (expected cfg.json with sae_weights.safetensors (SAELens) "
            "or sae.safetensors (sparsify))"
        )
    sae.metadata["path"] = str(found.resolve())
    if hub is not None:
        sae.metadata.update(
            _provenance({"hub_id": hub.repo_id, "hub_subfolder": hub.subfolder or None, "revision": hub.revision})
        )
    return sae.to(device) if device is not None else sae


# -- training ------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """How to train an SAE.

    ReLU (the paper's recipe): loss = ‖x − x̂‖² + l1_coeff · Σ_i z_i · ‖W_dec,i‖, decoder rows
    renormalised to unit norm after every step. Top-k (Gao et al. 2024): loss = ‖x − x̂‖² +
    aux_coeff · AuxK, where AuxK reconstructs the residual x − x̂ from the ``aux_k`` largest
    pre-activations of latents that have not fired for ``dead_tokens`` tokens. Squared errors are
    summed over the d dimensions and averaged over tokens, then divided by the variance of x so
    that the coefficients do not depend on the activations' scale.
    """

    n_latents: int
    activation: Activation = "relu"
    k: int | None = None
    l1_coeff: float = 1e-2
    lr: float = 1e-3
    steps: int | None = 1000
    aux_k: int | None = None
    aux_coeff: float = 1.0 / 32
    dead_tokens: int = 1_000_000
    seed: int = 0

    def __post_init__(self) -> None:
        _checks.count(self.n_latents, "n_latents", minimum=1)
        _checks.count(self.dead_tokens, "dead_tokens", minimum=1)
        if self.steps is not None:
            _checks.count(self.steps, "steps", minimum=1)
        for name in ("l1_coeff", "aux_coeff"):
            _checks.number(getattr(self, name), name, low=0.0)
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"lr must be a finite number > 0; got {self.lr!r}")


class TrainStep(NamedTuple):
    """Metrics of one optimisation step."""

    step: int
    loss: float
    fvu: float
    l0: float
    dead: int
    nonfinite: int = 0  # tokens of the batch left out for NaN or ±Inf activations


def _variance(x: Tensor) -> Tensor:
    return (x - x.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)


def train_sae(
    batches: Iterable[Tensor],
    d_in: int,
    config: TrainConfig,
    *,
    sae: SAE | None = None,
    init_pre_bias: bool | None = None,
    device: torch.device | str | None = None,
    on_step: Callable[[TrainStep], None] | None = None,
) -> tuple[SAE, list[TrainStep]]:
    """Train an SAE on a stream of activation batches [N, d_in] (see :class:`TrainConfig`).

    Runs ``config.steps`` steps, cycling through a re-iterable collection (a list or a tensor) as
    often as needed; a one-shot iterator that ends first raises ValueError. With ``steps=None``
    it makes one pass over the stream. ``sae`` continues training an existing SAE (its pre-bias
    is kept unless ``init_pre_bias``); a new SAE starts with the pre-bias at the first batch's
    mean. Returns the SAE (in eval mode) and the metrics of every step; ``config`` (as a dict)
    is recorded in the SAE's ``metadata["training"]``.
    """
    trainer = _Trainer(d_in, config, sae, init_pre_bias, device, on_step)
    for x in _cycled(batches, config.steps):
        trainer.step(x)
    return trainer.result()


def train_sae_family(
    batches: Iterable[Tensor],
    d_in: int,
    configs: Sequence[TrainConfig],
    *,
    device: torch.device | str | None = None,
    on_step: Callable[[int, TrainStep], None] | None = None,
) -> list[tuple[SAE, list[TrainStep]]]:
    """Train several SAEs from one pass over a stream: every batch is read once and given to each
    member that still has steps to take (``configs[i].steps``; all must be set, the stream is read
    for the largest). Member i is the SAE :func:`train_sae` would train from the same batches with
    ``configs[i]``, bit for bit (its ``metadata["training"]`` included). ``on_step(i, step)`` reports
    member i's steps.

    Raises
    ------
    ValueError
        For no configs, a config without ``steps``, or a stream too short for the longest member.
    """
    if not configs:
        raise ValueError("an SAE family needs at least one TrainConfig")
    if any(c.steps is None for c in configs):
        raise ValueError("every member of an SAE family needs a number of steps (TrainConfig.steps)")
    trainers = [
        _Trainer(d_in, c, None, None, device, None if on_step is None else functools.partial(on_step, i))
        for i, c in enumerate(configs)
    ]
    for x in _cycled(batches, max(c.steps or 0 for c in configs)):
        for t in trainers:
            if len(t.history) < (t.config.steps or 0):
                t.step(x)
    return [t.result() for t in trainers]


class _Trainer:
    """One SAE's optimisation, a step per batch (the body of :func:`train_sae`)."""

    def __init__(
        self,
        d_in: int,
        config: TrainConfig,
        sae: SAE | None,
        init_pre_bias: bool | None,
        device: torch.device | str | None,
        on_step: Callable[[TrainStep], None] | None,
    ) -> None:
        if sae is None:
            # seeded inside a fork of the CPU generator: reproducible, and the caller's RNG is left alone
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                sae = SAE(d_in, config.n_latents, config.activation, k=config.k, device=device)
            init_pre_bias = True if init_pre_bias is None else init_pre_bias
        if sae.d_in != d_in:
            raise ValueError(f"the SAE has d_in = {sae.d_in} but the activations have width {d_in}")
        sae.metadata["training"] = dataclasses.asdict(config)
        self.sae, self.config, self.d_in, self.on_step = sae, config, d_in, on_step
        self.init_pre_bias = bool(init_pre_bias)
        self.device = sae.W_enc.device
        self.opt = torch.optim.Adam([p for p in sae.parameters() if p.requires_grad], lr=config.lr)
        self.last_fired = torch.zeros(sae.n_latents, dtype=torch.int64, device=self.device)  # tokens since last fire
        self.aux_k = config.aux_k or max(1, d_in // 2)
        self.history: list[TrainStep] = []
        sae.train()

    def step(self, batch: Tensor) -> None:
        """One optimisation step on ``batch`` (its non-finite rows left out; an empty batch is skipped)."""
        sae, config, d_in = self.sae, self.config, self.d_in
        x = batch.to(device=self.device, dtype=sae.W_enc.dtype).reshape(-1, d_in)
        finite = torch.isfinite(x).all(-1)
        nonfinite = int(x.shape[0] - finite.sum())
        if nonfinite:
            x = x[finite]
        step = len(self.history)
        if x.shape[0] == 0:
            return
        if step == 0 and self.init_pre_bias:
            with torch.no_grad():
                sae.b_dec.copy_(x.mean(0))
        var = _variance(x)
        pre = sae.pre_activations(x)
        z = sae.activate(pre, exact_ties=False)
        err = x - sae.decode(z)
        mse = err.pow(2).sum(-1).mean() / var
        self.last_fired = torch.where((z > 0).any(0), 0, self.last_fired + x.shape[0])
        dead = self.last_fired >= config.dead_tokens
        if sae.activation == "topk":
            loss = mse
            if dead.any():
                val, idx = pre.masked_fill(~dead, -math.inf).topk(min(self.aux_k, int(dead.sum())), dim=-1)
                aux_hat = torch.zeros_like(pre).scatter_(-1, idx, val.clamp_min(0)) @ sae.W_dec
                aux = (err.detach() - aux_hat).pow(2).sum(-1).mean() / var
                loss = loss + config.aux_coeff * aux.nan_to_num(0.0)
        else:
            l1 = (z * sae.W_dec.norm(dim=1)).sum(-1).mean() / var.sqrt()
            loss = mse + config.l1_coeff * l1
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise ValueError(f"the training loss is {loss_value} at step {step}: try a smaller lr")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call,unused-ignore]  # torch leaves Tensor.backward unannotated (flagged under --strict only)
        self.opt.step()
        sae.normalize_decoder_()
        rec = TrainStep(step, loss_value, mse.item(), (z > 0).sum(-1).float().mean().item(), int(dead.sum()), nonfinite)
        self.history.append(rec)
        if self.on_step is not None:
            self.on_step(rec)

    def result(self) -> tuple[SAE, list[TrainStep]]:
        """The SAE (in eval mode) and the metrics of every step; ValueError if no step was taken."""
        if not self.history:
            raise ValueError("the activation stream is empty")
        self.sae.eval()
        return self.sae, self.history


def _cycled(batches: Iterable[Tensor], steps: int | None) -> Iterator[Tensor]:
    """``steps`` batches (all of one pass if None), cycling a re-iterable collection as needed."""
    if isinstance(batches, Tensor):
        batches = [batches]
    reiterable = not isinstance(batches, Iterator)
    done = 0
    while steps is None or done < steps:
        before = done
        for b in batches:
            yield b
            done += 1
            if steps is not None and done >= steps:
                return
        if steps is None or done == before:
            return
        if not reiterable:
            raise ValueError(
                f"the activation stream ended after {done} batches, before the {steps} training steps; "
                "pass more batches or fewer steps"
            )
