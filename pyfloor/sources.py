"""Activation streams: a teacher hooked at one or more layers, activation files, or any iterable of tensors.

Every source yields :class:`Batch` objects with a global, deterministic ``index``; that index is
what resumed runs skip by and what distributed ranks shard on (batch b goes to rank b mod world),
so the same tokens reach the same statistics however the run is split.

A teacher source runs the model only up to the hooked layers: forward hooks store their outputs
and the last of them to run stops the forward pass, so no compute is spent on the layers above the
deepest. Token sequences (files, text, datasets, streams) come from :mod:`pyfloor.tokens`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from . import _checks
from .tokens import (
    Sequences,
    StreamedSequences,
    TokenSequences,
    dataset_sequences,
    text_file_sequences,
    text_files,
    token_file_sequences,
)

__all__ = [
    "Batch",
    "Sequences",
    "ActivationSource",
    "ArraySource",
    "IterableSource",
    "SequenceSource",
    "TeacherSource",
    "StreamedSequences",
    "run_until",
    "check_token_ids",
    "input_device",
    "layer_list",
    "TokenSequences",
    "token_file_sequences",
    "text_file_sequences",
    "dataset_sequences",
    "find_layer",
    "layer_names",
    "StoppedForward",
    "load_teacher",
    "text_files",
]

Site = Literal["resid", "mlp"]


class Batch(NamedTuple):
    """One batch of activations [n_tokens, d] and its global position in the stream; a source read
    at several layers also gives each layer's activations by name (``acts`` is the first layer's)."""

    index: int  # type: ignore[assignment]  # the field shadows tuple.index by design (public API)
    acts: Tensor
    layers: Mapping[str, Tensor] | None = None


class ActivationSource:
    """A re-iterable stream of activation batches with deterministic global indices."""

    d: int
    batch_tokens: int
    #: the layers a source read at several layers yields in ``Batch.layers`` (empty: ``acts`` only)
    layer_names: tuple[str, ...] = ()

    def batches(self, *, start: int = 0, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        """Batches with index ≥ ``start`` whose index mod ``world`` equals ``rank``."""
        raise NotImplementedError

    def describe(self, layer: str | None = None) -> str:
        """A one-line description for reports and checkpoint fingerprints (of one of ``layer_names`` if given)."""
        raise NotImplementedError

    def provenance(self, layer: str | None = None) -> dict[str, Any]:
        """Where the activations (of ``layer`` if given) come from, JSON-ready, for reports."""
        return {"kind": type(self).__name__, "description": self.describe(layer), "width": self.width(layer)}

    def width(self, layer: str | None = None) -> int:
        """The width of the activations (of one of ``layer_names`` if given)."""
        if layer is not None:
            raise ValueError(f"this source yields one stream of activations, not layer {layer!r}")
        return self.d

    def position(self, index: int) -> dict[str, int] | None:
        """Where batch ``index`` starts in the underlying stream, for checkpoints (None: the index alone locates it)."""
        return None

    def seek(self, index: int, position: dict[str, int]) -> None:
        """Make the next ``batches(start=index)`` begin reading at ``position`` (from :meth:`position`)."""

    def __iter__(self) -> Iterator[Tensor]:
        """The activations of every batch, in order (each iteration reads the stream anew)."""
        return (b.acts for b in self.batches())


def _check_shard(start: int, rank: int, world: int) -> None:
    """ValueError unless 0 <= rank < world and start is a count >= 0."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank must lie in [0, world) with world >= 1; got rank={rank}, world={world}")
    _checks.count(start, "start")


def _float_activations(x: Tensor) -> Tensor:
    """float64 activations as float32 (the encode computes in float32); other dtypes unchanged."""
    return x.float() if x.dtype == torch.float64 else x


def _check_batch_tokens(batch_tokens: int) -> int:
    """``batch_tokens`` as an int; ValueError unless it is a count >= 1."""
    return _checks.count(batch_tokens, "batch_tokens", minimum=1)


# -- activations from arrays and iterables ---------------------------------------------------------
def _load_array(path: Path, key: str | None) -> NDArray[Any]:
    """The array of a ``.npy`` file (memory-mapped) or tensor ``key`` of a safetensors file (the only one if None)."""
    arr: NDArray[Any]
    if path.suffix == ".npy":
        arr = np.load(path, mmap_mode="r")
        return arr
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            keys = list(f.keys())
            if key is None and len(keys) != 1:
                raise ValueError(f"{path} holds {len(keys)} tensors ({', '.join(keys)}); name one with key=")
            name = key if key is not None else keys[0]
            if name not in keys:
                raise ValueError(f"{path} has no tensor {name!r}; it holds {', '.join(keys)}")
            arr = f.get_tensor(name)
            return arr
    raise ValueError(f"{path}: activation files must be .npy or .safetensors")


class ArraySource(ActivationSource):
    """Activations [N, d] from ``.npy`` (memory-mapped) or safetensors files, or arrays, in order,
    cut into batches of exactly ``batch_tokens`` rows (the last batch may be shorter); float64
    arrives as float32 unless ``dtype`` says otherwise."""

    def __init__(
        self,
        arrays: Sequence[str | os.PathLike[str] | NDArray[Any] | Tensor],
        batch_tokens: int,
        *,
        key: str | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.batch_tokens = _check_batch_tokens(batch_tokens)
        if len(arrays) == 0:
            raise ValueError("no activation arrays given")
        self._names: list[str] = []
        self._arrays: list[NDArray[Any] | Tensor] = []
        for a in arrays:
            arr: NDArray[Any] | Tensor
            if isinstance(a, (str, os.PathLike)):
                path = Path(a)
                if not path.is_file():
                    raise FileNotFoundError(f"{path}: no such activation file")
                self._names.append(str(path.resolve()))
                arr = _load_array(path, key)
            else:
                self._names.append(f"<array {tuple(a.shape)}>")
                arr = a
            if arr.ndim != 2:
                raise ValueError(
                    f"{self._names[-1]}: activations must be 2-D [tokens, d]; got shape {tuple(arr.shape)}"
                )
            self._arrays.append(arr)
        widths = {int(a.shape[1]) for a in self._arrays}
        if len(widths) != 1:
            raise ValueError(f"activation arrays have different widths {sorted(widths)}")
        self.d = widths.pop()
        self._offsets = np.cumsum([0] + [int(a.shape[0]) for a in self._arrays])
        self.n_tokens = int(self._offsets[-1])
        self.dtype, self.device = dtype, torch.device(device)

    def describe(self, layer: str | None = None) -> str:
        """The files (or array shapes), the token count and the width."""
        self.width(layer)
        return f"activations {', '.join(self._names)} ({self.n_tokens:,} tokens, d={self.d})"

    def _rows(self, lo: int, hi: int) -> Tensor:
        """Rows lo … hi − 1 of the concatenated arrays as one tensor on the source's device and dtype."""
        parts: list[Tensor] = []
        for i, arr in enumerate(self._arrays):
            a0, a1 = self._offsets[i], self._offsets[i + 1]
            if a1 <= lo or a0 >= hi:
                continue
            part = arr[max(lo, a0) - a0 : min(hi, a1) - a0]
            parts.append(part if isinstance(part, Tensor) else torch.from_numpy(np.array(part)))  # a writable copy
        x = parts[0] if len(parts) == 1 else torch.cat(parts)
        return _float_activations(x).to(device=self.device, dtype=self.dtype)

    def batches(self, *, start: int = 0, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        """Batches with index >= ``start`` and index mod ``world`` = ``rank``; batch b holds rows
        [b·batch_tokens, (b+1)·batch_tokens)."""
        _check_shard(start, rank, world)
        n_batches = -(-self.n_tokens // self.batch_tokens)
        first = start + ((rank - start) % world)
        for b in range(first, n_batches, world):
            lo = b * self.batch_tokens
            yield Batch(b, self._rows(lo, min(lo + self.batch_tokens, self.n_tokens)))


class IterableSource(ActivationSource):
    """Any iterable of activation tensors [..., d], re-cut into batches of ``batch_tokens`` rows.

    Skipping and sharding iterate over the tensors without computing anything else; a one-shot
    iterator can be consumed only once.
    """

    def __init__(self, tensors: Iterable[Tensor | NDArray[Any]], d: int, batch_tokens: int) -> None:
        self.batch_tokens = _check_batch_tokens(batch_tokens)
        self.d = int(d)
        self._tensors = tensors
        self._used = False

    def describe(self, layer: str | None = None) -> str:
        """ "iterable of activations" and the width."""
        self.width(layer)
        return f"iterable of activations (d={self.d})"

    def _rechunked(self) -> Iterator[Tensor]:
        """The tensors as [rows, d] batches of exactly ``batch_tokens`` rows (the last one may be shorter)."""
        if isinstance(self._tensors, Iterator):
            if self._used:
                raise ValueError("this activation iterator has already been consumed")
            self._used = True
        pending: list[Tensor] = []  # pieces of the next batch
        have = 0
        for t in self._tensors:
            t = _float_activations(torch.as_tensor(t))
            if t.shape[-1] != self.d:
                raise ValueError(f"activation tensor has width {t.shape[-1]}, expected d={self.d}")
            t = t.reshape(-1, self.d)
            offset = 0
            while offset < t.shape[0]:
                take = min(self.batch_tokens - have, t.shape[0] - offset)
                pending.append(t[offset : offset + take])
                offset += take
                have += take
                if have == self.batch_tokens:
                    yield pending[0] if len(pending) == 1 else torch.cat(pending)
                    pending, have = [], 0
        if have:
            yield torch.cat(pending)

    def batches(self, *, start: int = 0, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        """Batches with index >= ``start`` and index mod ``world`` = ``rank`` (the others are read and skipped);
        ValueError when a one-shot iterator is read a second time or a tensor has the wrong width."""
        _check_shard(start, rank, world)
        for b, x in enumerate(self._rechunked()):
            if b >= start and b % world == rank:
                yield Batch(b, x)


# -- the hooked teacher ------------------------------------------------------------------------------
class StoppedForward(BaseException):
    """Raised by the hook to stop the teacher's forward pass after the hooked layer (a
    BaseException, so model code catching ``Exception`` cannot swallow it)."""


def _blocks(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The model's list of transformer blocks: a ModuleList of the config's layer count, one named
    like ``…layers`` or ``…h`` first; without a config, the longest ModuleList."""
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    lists = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.ModuleList) and len(mod) > 0]
    if n_layers is not None:
        fits = [(name, mod) for name, mod in lists if len(mod) == n_layers]
        named = [(name, mod) for name, mod in fits if name.rsplit(".", 1)[-1] in ("layers", "h", "blocks", "layer")]
        if named or fits:
            return (named or fits)[0]
    return max(lists, key=lambda nm: len(nm[1]), default=None)


def layer_names(model: nn.Module) -> list[str]:
    """Names accepted by :func:`find_layer`: each block and its MLP."""
    found = _blocks(model)
    if found is None:
        return []
    prefix, blocks = found
    names = []
    for i, block in enumerate(blocks):
        names.append(f"{prefix}.{i}")
        if hasattr(block, "mlp"):
            names.append(f"{prefix}.{i}.mlp")
    return names


def find_layer(model: nn.Module, layer: int | str, site: Site = "resid") -> tuple[str, nn.Module]:
    """The module whose output is read: block ``layer`` (residual stream after it) or its MLP
    (``site="mlp"``); a string names any module exactly. Unknown names list the valid ones."""
    if site not in ("resid", "mlp"):
        raise ValueError(f"site must be 'resid' or 'mlp'; got {site!r}")
    if isinstance(layer, str) and not layer.lstrip("-").isdigit():
        try:
            return layer, model.get_submodule(layer)
        except AttributeError:
            raise ValueError(
                f"the model has no layer {layer!r}; valid layers are: {', '.join(layer_names(model)) or '(none found)'}"
            ) from None
    found = _blocks(model)
    if found is None:
        raise ValueError("could not find the model's list of transformer blocks; name the layer as a module path")
    prefix, blocks = found
    i = int(layer)
    if not 0 <= i < len(blocks):
        raise ValueError(f"layer {i} does not exist: the model has blocks 0 … {len(blocks) - 1} ({prefix})")
    name, module = f"{prefix}.{i}", blocks[i]
    if site == "mlp":
        mlp = getattr(module, "mlp", None)
        if not isinstance(mlp, nn.Module):
            raise ValueError(f"block {name} has no .mlp submodule; name the module explicitly")
        name, module = f"{name}.mlp", mlp
    return name, module


Layers = int | str | Sequence[int | str]


class SequenceSource(ActivationSource):
    """A model read at one or more layers over token sequences, stopped after the deepest of them.

    Each batch is ``max(1, batch_tokens // seq_len)`` sequences, so ``self.batch_tokens`` (the
    positions fed per batch) is that many times ``seq_len``; padding and leading-BOS positions are
    left out of the activations it yields. ``layer_names`` names the hooked layers in the order
    asked for; each batch's ``layers`` holds every one of them, ``acts`` the first. Subclasses give
    the model's forward pass (:meth:`_forward`) and name (:meth:`_teacher_name`).
    """

    def __init__(
        self,
        model: nn.Module,
        layer_names: Sequence[str],
        sequences: Sequences,
        batch_tokens: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if not layer_names:
            raise ValueError("name at least one layer to read")
        if len(set(layer_names)) != len(layer_names):
            raise ValueError(f"a layer is named twice: {', '.join(layer_names)}")
        self.model = model.eval()
        self.layer_names = tuple(layer_names)
        self.sequences = sequences
        self.batch_sequences = max(1, _check_batch_tokens(batch_tokens) // sequences.seq_len)
        self.batch_tokens = self.batch_sequences * sequences.seq_len
        self.device = torch.device(device) if device is not None else input_device(model)
        self.dtype = dtype
        self.widths = self._widths()
        self.d = self.widths[self.layer_names[0]]

    def _forward(self, ids: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """Every hooked layer's output [B, T, d] for [B, T] ids, by layer name, the model stopped after the deepest."""
        raise NotImplementedError

    def _teacher_name(self) -> str:
        """The teacher's name for descriptions."""
        raise NotImplementedError

    def _widths(self) -> dict[str, int]:
        """Each hooked layer's width, from one forward pass over two tokens."""
        first = next(iter(self.sequences.chunks(1)))
        with torch.no_grad():
            outs = self._forward(first.ids[:, :2], first.mask[:, :2])
        return {name: int(out.shape[-1]) for name, out in outs.items()}

    def width(self, layer: str | None = None) -> int:
        """The width of ``layer``'s activations (the first layer's if None)."""
        return self.widths[self._layer(layer)]

    def _layer(self, layer: str | None) -> str:
        """``layer`` checked against the hooked layers (the first if None)."""
        if layer is None:
            return self.layer_names[0]
        if layer not in self.widths:
            raise ValueError(f"this source reads {', '.join(self.layer_names)}, not {layer!r}")
        return layer

    def describe(self, layer: str | None = None) -> str:
        """The teacher's name, the hooked layer (all of them for a several-layer source when ``layer``
        is None) and the sequences' description."""
        at = ", ".join(self.layer_names) if layer is None else self._layer(layer)
        return f"teacher {self._teacher_name()} at {at} over {self.sequences.description}"

    def provenance(self, layer: str | None = None) -> dict[str, Any]:
        """The teacher (name, class, revision, dtype, blocks loaded, device map), the layer read and
        the token sequences, JSON-ready."""
        cfg = getattr(self.model, "config", None)
        param = next(self.model.parameters(), None)
        device_map = getattr(self.model, "hf_device_map", None)
        blocks = _blocks(self.model)
        return {
            **super().provenance(layer),
            "teacher": {
                "name": self._teacher_name(),
                "class": type(self.model).__name__,
                "revision": getattr(cfg, "_commit_hash", None),
                "dtype": None if param is None else str(param.dtype).removeprefix("torch."),
                "blocks_loaded": None if blocks is None else len(blocks[1]),
                "device_map": None if device_map is None else {k: str(v) for k, v in device_map.items()},
            },
            "layer": self._layer(layer),
            "tokens": {
                "description": self.sequences.description,
                "seq_len": self.sequences.seq_len,
                "leading_bos": self.sequences.leading_bos,
                "streamed": isinstance(self.sequences, StreamedSequences),
                "batch_sequences": self.batch_sequences,
            },
        }

    def n_batches(self) -> int | None:
        """Batches in the whole stream (None for a stream of unknown length)."""
        if isinstance(self.sequences, StreamedSequences):
            return None
        return -(-len(self.sequences) // self.batch_sequences)

    def position(self, index: int) -> dict[str, int] | None:
        """Where batch ``index`` starts in a streamed corpus (None for random-access sequences)."""
        if isinstance(self.sequences, StreamedSequences):
            return self.sequences.position(index)
        return None

    def seek(self, index: int, position: dict[str, int]) -> None:
        """Make the next ``batches(start=index)`` of a streamed corpus begin at ``position``."""
        if isinstance(self.sequences, StreamedSequences):
            self.sequences.seek(index, position)

    def batches(self, *, start: int = 0, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        """Batches with index >= ``start`` and index mod ``world`` = ``rank``: the real-token activations
        [tokens, d] of sequences [b·batch_sequences, (b+1)·batch_sequences), on the teacher's device."""
        _check_shard(start, rank, world)
        for chunk in self.sequences.chunks(self.batch_sequences, start=start, rank=rank, world=world):
            outs = self._forward(chunk.ids, chunk.mask)
            keep = chunk.mask.bool()
            if self.sequences.leading_bos:
                keep[:, 0] = False
            layers = {}
            for name in self.layer_names:
                acts = outs[name][keep.to(outs[name].device)]
                layers[name] = acts if self.dtype is None else acts.to(self.dtype)
            yield Batch(chunk.index, layers[self.layer_names[0]], layers)


def input_device(model: nn.Module) -> torch.device:
    """The device a model's token ids go to: its input embeddings' (the CPU for offloaded ones), else its first parameter's."""
    get_embeddings = getattr(model, "get_input_embeddings", None)
    embeddings = get_embeddings() if callable(get_embeddings) else None
    weight = getattr(embeddings, "weight", None)
    param = weight if isinstance(weight, Tensor) else next(model.parameters(), None)
    if param is None or param.device.type == "meta":
        return torch.device("cpu")
    return param.device


class TeacherSource(SequenceSource):
    """A Hugging Face-style teacher (``model(input_ids=, attention_mask=)``) read at one or more
    layers (:func:`find_layer`; a list reads them all in one forward pass, which stops after the
    deepest) over token sequences. Sharded models (``device_map``) take their ids on the input
    embeddings' device."""

    def __init__(
        self,
        model: nn.Module,
        layer: Layers,
        sequences: Sequences,
        batch_tokens: int,
        *,
        site: Site = "resid",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        found = [find_layer(model, one, site) for one in layer_list(layer)]
        self.modules = dict(found)
        self.layer_name, self.module = found[0]
        get_embeddings = getattr(model, "get_input_embeddings", None)
        embeddings = get_embeddings() if get_embeddings is not None else None
        self._vocab: int | None = getattr(embeddings, "num_embeddings", None)  # token ids must lie below it
        super().__init__(model, [name for name, _ in found], sequences, batch_tokens, device=device, dtype=dtype)

    def _widths(self) -> dict[str, int]:
        """The config's hidden size for block outputs; a forward pass where an MLP or other module is hooked."""
        cfg = getattr(self.model, "config", None)
        blocks = _blocks(self.model)
        block_names = set() if blocks is None else {f"{blocks[0]}.{i}" for i in range(len(blocks[1]))}
        if cfg is not None and hasattr(cfg, "hidden_size") and set(self.layer_names) <= block_names:
            return dict.fromkeys(self.layer_names, int(cfg.hidden_size))
        return super()._widths()

    def _teacher_name(self) -> str:
        return getattr(getattr(self.model, "config", None), "_name_or_path", "") or type(self.model).__name__

    def _forward(self, ids: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """Run the model on [B, T] ids until every hooked module has run; their outputs [B, T, d].
        ValueError for a token id outside the teacher's vocabulary."""
        check_token_ids(ids, self._vocab, self.sequences.description)
        return run_until(
            self.modules,
            lambda: self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), use_cache=False),
        )


def run_until(modules: dict[str, nn.Module], forward: Callable[[], object]) -> dict[str, Tensor]:
    """The outputs of ``modules`` (by name) during ``forward()``, which is stopped (:class:`StoppedForward`)
    once all of them have run; RuntimeError if the forward pass ends before reaching one."""
    captured: dict[str, Tensor] = {}

    def hook_for(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            captured[name] = output[0] if isinstance(output, (tuple, list)) else output
            if len(captured) == len(modules):
                raise StoppedForward

        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in modules.items()]
    try:
        with torch.no_grad():
            forward()
    except StoppedForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in modules if name not in captured]
    if missing:
        raise RuntimeError(f"the forward pass never reached {', '.join(missing)}")
    return captured


def check_token_ids(ids: Tensor, vocab: int | None, description: str) -> None:
    """ValueError naming ``description`` when a token id of ``ids`` lies outside [0, ``vocab``) (None: unchecked)."""
    if vocab is None or not ids.numel():
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab:
        raise ValueError(
            f"{description}: token id {low if low < 0 else high} is outside the teacher's vocabulary [0, {vocab})"
        )


def layer_list(layer: Layers) -> list[int | str]:
    """One layer, or a list of them, as a list."""
    if isinstance(layer, (int, str)):
        return [layer]
    out = list(layer)
    if not out:
        raise ValueError("name at least one layer to read")
    return out


DeviceMap = str | dict[str, int | str]


def load_teacher(
    name: str | os.PathLike[str],
    *,
    gguf_file: str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    device_map: DeviceMap | None = None,
    offload_folder: str | os.PathLike[str] | None = None,
    keep_layers: int | None = None,
    revision: str | None = None,
) -> tuple[nn.Module, Any]:
    """A Hugging Face causal LM and its tokenizer from a local directory or a hub id (a local
    directory is read offline); ``gguf_file`` loads a GGUF checkpoint inside that directory.

    ``device_map`` (accelerate's ``"auto"``, ``"balanced"``, ``"sequential"``, or a map of module
    names to devices, ``"cpu"`` or ``"disk"``; disk offload writes to ``offload_folder``) shards the
    model over the machine's devices instead of moving it to ``device``. ``keep_layers``: build and
    load only the first that many transformer blocks (the weights of the others are never read),
    for a teacher read no deeper than block ``keep_layers − 1``.

    Returns the model (in eval mode, in ``dtype`` if given) and its tokenizer. Raises ImportError
    without transformers (or accelerate, for ``device_map``); loading errors of transformers propagate.
    """
    try:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ImportError("reading a teacher needs transformers: pip install 'pyfloor[hf]'") from exc
    if device_map is not None and device is not None:
        raise ValueError("give device_map (a sharded teacher) or device, not both")
    if keep_layers is not None:
        _checks.count(keep_layers, "keep_layers", minimum=1)
    local = Path(name).is_dir()
    if local:  # the absolute path: it names the teacher in reports and checkpoints wherever pyfloor runs from
        name = Path(name).resolve()
    kw: dict[str, Any] = {"local_files_only": True} if local else {}
    if gguf_file is not None:
        kw["gguf_file"] = gguf_file
    if revision is not None:
        kw["revision"] = revision
    tokenizer = AutoTokenizer.from_pretrained(str(name), **kw)
    load: dict[str, Any] = {}
    if dtype is not None:
        load["dtype"] = dtype
    if device_map is not None:
        load.update(device_map=device_map, offload_folder=None if offload_folder is None else str(offload_folder))
    if keep_layers is not None:
        load["config"] = _truncated_config(AutoConfig.from_pretrained(str(name), **kw), keep_layers)
    with _quiet_transformers(keep_layers is not None):  # the blocks left out are "unexpected" weights
        model: nn.Module = AutoModelForCausalLM.from_pretrained(str(name), **kw, **load)
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer


@contextlib.contextmanager
def _quiet_transformers(quiet: bool) -> Iterator[None]:
    """transformers' warnings silenced inside the block when ``quiet``."""
    if not quiet:
        yield
        return
    from transformers.utils import logging

    before = logging.get_verbosity()
    logging.set_verbosity(40)  # logging.ERROR
    try:
        yield
    finally:
        logging.set_verbosity(before)


def _truncated_config(config: Any, keep: int) -> Any:
    """``config`` with its first ``keep`` transformer blocks only (per-layer lists cut to match);
    ValueError when it has fewer, or no layer count."""
    n = getattr(config, "num_hidden_layers", None)
    if not isinstance(n, int):
        raise ValueError(f"{type(config).__name__} names no num_hidden_layers; load the whole teacher")
    if keep > n:
        raise ValueError(f"keep_layers={keep} (layers up to {keep - 1}), but the teacher has blocks 0 … {n - 1}")
    for key, value in list(vars(config).items()):
        if isinstance(value, list) and len(value) == n and key != "architectures":
            setattr(config, key, value[:keep])
    config.num_hidden_layers = keep
    return config
