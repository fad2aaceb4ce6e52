"""Sparse autoencoders: weights, the reference encode/decode, files, and training.

An SAE maps an activation x ∈ R^d to latents z ∈ R^m and back:

    pre = (x − b_dec) @ W_enc + b_enc          (b_dec is the learned pre-bias)
    z   = act(pre)                             ReLU, JumpReLU(θ) or top-k
    x̂   = z @ W_dec + b_dec

with ``W_enc`` [d, m] and ``W_dec`` [m, d]. Top-k keeps the k largest pre-activations of each
token (ties broken towards the lowest latent index) and applies ReLU to them; JumpReLU keeps
``pre`` where ``pre > θ_i`` (θ ≥ 0).
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple, NoReturn, TypeGuard

import torch
from torch import Tensor, nn

from . import _checks
from ._io import CheckpointError, load_tagged, save_tagged

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

    Raises
    ------
    ValueError
        For an unknown activation, a size below 1, or a k that is missing, out of range or given
        for another activation.
    """

    threshold: nn.Parameter | None

    def __init__(
        self,
        d_in: int,
        n_latents: int,
        activation: Activation = "relu",
        *,
        k: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
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
        """Write weights and config to a safetensors file (pyfloor's own SAE format), atomically."""
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_tagged(
            path,
            tensors,
            kind=SAE_FORMAT,
            version=SAE_VERSION,
            metadata={"config": json.dumps(self.config())},
            framework="pt",
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, device: torch.device | str | None = None) -> SAE:
        """Read a file written by :meth:`save`, in the file's dtype, onto ``device`` if given.

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
            sae = cls(cfg["d_in"], cfg["n_latents"], cfg["activation"], k=cfg["k"], dtype=tensors["W_enc"].dtype)
            sae.load_state_dict(tensors)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # ValueError: a config out of range (k = inf, …)
            raise CheckpointError(f"{path}: inconsistent SAE file ({exc})") from exc
        sae.check_weights()
        return sae.to(device) if device is not None else sae


# -- other libraries' checkpoints ---------------------------------------------------------------------
def _read_dir(path: Path, weights_name: str) -> tuple[_Config, _Tensors]:
    """cfg.json and the tensors of ``weights_name`` in an SAE directory."""
    from safetensors.torch import load_file

    cfg_path, weights = path / "cfg.json", path / weights_name
    for p in (cfg_path, weights):
        if not p.is_file():
            raise FileNotFoundError(f"{path}: missing {p.name}")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{cfg_path}: not a JSON config ({exc})") from exc
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object; got {type(cfg).__name__}")
    try:
        tensors = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{weights}: unreadable or corrupt safetensors file ({exc})") from exc
    return _Config(cfg, path), _Tensors(tensors, weights)


class _Config(dict[str, object]):
    """cfg.json of an SAE directory: a missing or non-integer key raises CheckpointError naming it."""

    def __init__(self, cfg: dict[str, object], path: Path) -> None:
        super().__init__(cfg)
        self.path = path

    def __missing__(self, key: str) -> NoReturn:
        raise CheckpointError(f"{self.path}: cfg.json lacks {key!r}")

    def integer(self, key: str) -> int:
        value = self[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise CheckpointError(f"{self.path}: cfg.json {key} must be an integer; got {value!r}")
        return value


class _Tensors(dict[str, Tensor]):
    """The tensors of an SAE directory's weights file: a missing one raises CheckpointError naming it."""

    def __init__(self, tensors: dict[str, Tensor], path: Path) -> None:
        super().__init__(tensors)
        self.path = path

    def __missing__(self, key: str) -> NoReturn:
        raise CheckpointError(f"{self.path}: no tensor {key!r}")


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
) -> SAE:
    """An SAE (eval mode, W_enc's dtype) holding copies of these weights; ValueError if they do not fit."""
    _check_weights(W_enc, b_enc, W_dec, b_dec, threshold)
    d, m = W_enc.shape
    sae = SAE(d, m, activation, k=k, dtype=W_enc.dtype)
    with torch.no_grad():
        for name, value in (("W_enc", W_enc), ("b_enc", b_enc), ("W_dec", W_dec), ("b_dec", b_dec)):
            getattr(sae, name).copy_(value)
        if threshold is not None:
            sae.jumprelu_threshold().copy_(threshold)
    sae.check_weights()
    return sae.eval()


def _from_saelens(path: Path) -> SAE:
    """An SAELens directory (cfg.json + sae_weights.safetensors): standard, jumprelu and topk SAEs."""
    cfg, t = _read_dir(path, "sae_weights.safetensors")
    arch = cfg.get("architecture", "standard")
    kinds: dict[str, Activation] = {"standard": "relu", "jumprelu": "jumprelu", "topk": "topk"}
    if not isinstance(arch, str) or arch not in kinds:
        raise ValueError(f"{path}: SAELens architecture {arch!r} is not supported (supported: {', '.join(kinds)})")
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", None):
        raise ValueError(
            f"{path}: SAELens normalize_activations={norm!r} is not supported; fold it into the weights first"
        )
    W_enc, b_enc, W_dec, b_dec = (t[n].clone() for n in ("W_enc", "b_enc", "W_dec", "b_dec"))
    threshold = t["threshold"] if "threshold" in t else (t["log_threshold"].exp() if "log_threshold" in t else None)
    threshold = threshold if arch == "jumprelu" else None  # only a JumpReLU SAE has one
    if arch == "jumprelu" and threshold is None:
        raise ValueError(f"{path}: JumpReLU SAE without a threshold tensor")
    _check_weights(W_enc, b_enc, W_dec, b_dec, threshold)  # before the folds below compute with them
    b_enc, W_dec, b_dec = (w.to(W_enc.dtype) for w in (b_enc, W_dec, b_dec))  # the SAE takes W_enc's dtype
    if cfg.get("rescale_acts_by_decoder_norm", False) and arch != "topk":
        raise ValueError(f"{path}: rescale_acts_by_decoder_norm is only supported for topk SAEs")
    if cfg.get("rescale_acts_by_decoder_norm", False):
        # SAELens scales pre-activations by ‖W_dec,i‖; fold that into the encoder and decoder.
        norms = W_dec.norm(dim=1)
        W_enc, b_enc, W_dec = W_enc * norms, b_enc * norms, W_dec / norms[:, None]
    if not cfg.get("apply_b_dec_to_input", True):
        # pre = x @ W_enc + b_enc = (x − b_dec) @ W_enc + (b_enc + b_dec @ W_enc)
        b_enc = b_enc + b_dec @ W_enc
    k = cfg.integer("k") if arch == "topk" else None
    return _from_tensors(kinds[arch], k, W_enc, b_enc, W_dec, b_dec, threshold)


def _from_sparsify(path: Path) -> SAE:
    """An EleutherAI sparsify directory (cfg.json + sae.safetensors): top-k SAEs."""
    cfg, t = _read_dir(path, "sae.safetensors")
    if cfg.get("activation", "topk") != "topk":
        raise ValueError(f"{path}: sparsify activation {cfg.get('activation')!r} is not supported (only topk)")
    if cfg.get("transcode") or cfg.get("skip_connection") or "W_skip" in t:
        raise ValueError(f"{path}: a transcoder or skip connection is not an SAE of one layer; not supported")
    W = t["encoder.weight"]
    if W.ndim != 2:
        raise ValueError(f"{path}: encoder.weight must be 2-D [n_latents, d_in]; got shape {tuple(W.shape)}")
    return _from_tensors("topk", cfg.integer("k"), W.T.contiguous(), t["encoder.bias"], t["W_dec"], t["b_dec"])


def load_sae(path: str | os.PathLike[str], *, device: torch.device | str | None = None) -> SAE:
    """Load an SAE: a pyfloor ``.safetensors`` file, an SAELens directory (cfg.json +
    sae_weights.safetensors) or an EleutherAI sparsify directory (cfg.json + sae.safetensors).

    SAELens standard (ReLU), JumpReLU and top-k SAEs are read with their pre-bias and decoder-norm
    options folded into the weights; sparsify SAEs are top-k. The SAE keeps the file's dtype and
    goes to ``device`` if given.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist, or a directory lacks cfg.json or its weights file.
    ValueError
        For a directory of neither layout, an unsupported architecture or option, or weights
        that do not fit one SAE (:class:`CheckpointError`, a ValueError, for unreadable or corrupt files).
    """
    path = Path(path)
    if path.is_file():
        return SAE.load(path, device=device)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such SAE file or directory")
    if (path / "sae_weights.safetensors").is_file():
        sae = _from_saelens(path)
    elif (path / "sae.safetensors").is_file():
        sae = _from_sparsify(path)
    else:
        raise ValueError(
            f"{path}: not an SAE directory (expected cfg.json with sae_weights.safetensors (SAELens) "
            "or sae.safetensors (sparsify))"
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
    mean. Returns the SAE (in eval mode) and the metrics of every step.
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
    ``configs[i]``, bit for bit. ``on_step(i, step)`` reports member i's steps.

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
