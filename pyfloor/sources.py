"""Activation streams: a teacher hooked at one layer, activation files, or any iterable of tensors.

Every source yields :class:`Batch` objects with a global, deterministic ``index``; that index is
what resumed runs skip by and what distributed ranks shard on (batch b goes to rank b mod world),
so the same tokens reach the same statistics however the run is split.

A teacher source runs the model only up to the hooked layer: a forward hook on that layer stores
its output and stops the forward pass, so no compute is spent on the layers above it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from . import _checks

__all__ = [
    "Batch",
    "ActivationSource",
    "ArraySource",
    "IterableSource",
    "TeacherSource",
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
    """One batch of activations [n_tokens, d] and its global position in the stream."""

    index: int  # type: ignore[assignment]  # the field shadows tuple.index by design (public API)
    acts: Tensor


class ActivationSource:
    """A re-iterable stream of activation batches with deterministic global indices."""

    d: int
    batch_tokens: int

    def batches(self, *, start: int = 0, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        """Batches with index ≥ ``start`` whose index mod ``world`` equals ``rank``."""
        raise NotImplementedError

    def describe(self) -> str:
        """A one-line description for reports and checkpoint fingerprints."""
        raise NotImplementedError

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

    def describe(self) -> str:
        """The files (or array shapes), the token count and the width."""
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

    def describe(self) -> str:
        """ "iterable of activations" and the width."""
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


# -- token sequences ---------------------------------------------------------------------------------
class TokenSequences:
    """Fixed-length token sequences for a teacher, read lazily: :meth:`rows` gives ``ids``
    [k, seq_len] int64 and a ``mask`` (1 = a real token, 0 = padding). ``leading_bos``: position 0
    of every sequence is a BOS token (fed to the teacher, left out of the activations).

    Made from in-memory ``ids``/``mask`` tensors, or by :func:`token_file_sequences`,
    :func:`text_file_sequences` and :func:`dataset_sequences`, which pack a token stream (a
    memory-mapped file stays on disk: a batch reads only its own sequences).
    """

    def __init__(self, ids: Tensor, mask: Tensor, description: str, leading_bos: bool = False) -> None:
        if ids.ndim != 2 or ids.shape != mask.shape:
            raise ValueError(f"ids and mask must both be [n_seq, seq_len]; got {tuple(ids.shape)}, {tuple(mask.shape)}")
        self._init(
            lambda i0, i1: (ids[i0:i1].long(), mask[i0:i1].long()),
            int(ids.shape[0]),
            int(ids.shape[1]),
            description,
            leading_bos,
        )

    def _init(
        self,
        read: Callable[[int, int], tuple[Tensor, Tensor]],
        n: int,
        seq_len: int,
        description: str,
        leading_bos: bool,
        start: int = 0,
    ) -> None:
        if n - start <= 0:
            raise ValueError(f"{description}: no token sequences (the input is empty)")
        self._read, self._n, self._start = read, n, start
        self.seq_len, self.description, self.leading_bos = seq_len, description, leading_bos

    @classmethod
    def packed(
        cls, stream: NDArray[np.integer[Any]], seq_len: int, description: str, *, bos: int | None = None, pad: int = 0
    ) -> TokenSequences:
        """A 1-D token stream (any integer array, e.g. a memmap) cut into sequences of ``seq_len``,
        each led by ``bos`` when given; the last sequence is padded and its padding masked."""
        _checks.count(seq_len, "seq_len", minimum=2)
        body = seq_len - (bos is not None)
        first = int(bos is not None)

        def read(i0: int, i1: int) -> tuple[Tensor, Tensor]:
            chunk = np.asarray(stream[i0 * body : i1 * body], dtype=np.int64)
            k = i1 - i0
            ids = np.full((k, seq_len), pad, dtype=np.int64)
            mask = np.zeros((k, seq_len), dtype=np.int64)
            body_ids = np.full(k * body, pad, dtype=np.int64)
            body_ids[: chunk.size] = chunk
            ids[:, first:] = body_ids.reshape(k, body)
            mask[:, first:] = (np.arange(k * body) < chunk.size).reshape(k, body)
            if bos is not None:
                ids[:, 0], mask[:, 0] = bos, 1
            return torch.from_numpy(ids), torch.from_numpy(mask)

        out = cls.__new__(cls)
        out._init(read, -(-int(stream.size) // body), seq_len, description, bos is not None)
        return out

    def __len__(self) -> int:
        """The number of sequences."""
        return self._n - self._start

    def rows(self, i0: int = 0, i1: int | None = None) -> tuple[Tensor, Tensor]:
        """``ids`` and ``mask`` [k, seq_len] of sequences i0 … i1 − 1 (all of them by default)."""
        i1 = len(self) if i1 is None else min(i1, len(self))
        return self._read(self._start + i0, self._start + i1)

    def _window(self, start: int, stop: int, label: str) -> TokenSequences:
        out = TokenSequences.__new__(TokenSequences)
        out._init(self._read, stop, self.seq_len, f"{self.description} [{label}]", self.leading_bos, start)
        return out

    def _sequences_for(self, n_tokens: int) -> int:
        return min(len(self), -(-_checks.count(n_tokens, "n_tokens") // self.seq_len))

    def take(self, n_tokens: int) -> TokenSequences:
        """The sequences holding the first ``n_tokens`` tokens (rounded up to whole sequences)."""
        cut = self._sequences_for(n_tokens)
        return self._window(self._start, self._start + cut, f"first {cut} seq")

    def skip(self, n_tokens: int) -> TokenSequences:
        """The sequences after those :meth:`take` returns, e.g. to measure on tokens an SAE was not trained on."""
        cut = self._sequences_for(n_tokens)
        return self._window(self._start + cut, self._n, f"from seq {cut}")


def _integer_dtype(name: str) -> np.dtype[np.integer[Any]]:
    """The numpy integer dtype called ``name``; ValueError for anything else."""
    try:
        dtype = np.dtype(name)
    except TypeError:
        dtype = None
    if dtype is None or not np.issubdtype(dtype, np.integer):
        raise ValueError(f"bin_dtype must name an integer type such as uint16 or int32; got {name!r}")
    return dtype


def token_file_sequences(
    path: str | os.PathLike[str],
    seq_len: int,
    *,
    bin_dtype: str = "uint16",
    bos_token_id: int | None = None,
    pad_token_id: int = 0,
) -> TokenSequences:
    """Pre-tokenized ids from ``.npy`` (1-D stream, or 2-D [n_seq, seq_len] used as is) or raw
    ``.bin`` (a 1-D stream of ``bin_dtype``, as nanoGPT writes them). A 1-D stream is cut into
    sequences, each led by ``bos_token_id`` when given."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such token file")
    if path.suffix == ".npy":
        arr = np.load(path, mmap_mode="r")
    elif path.suffix == ".bin":
        arr = np.memmap(path, dtype=_integer_dtype(bin_dtype), mode="r")
    else:
        raise ValueError(f"{path}: token files must be .npy or .bin")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{path}: token ids must be integers; got dtype {arr.dtype}")
    if arr.ndim == 2:
        if bos_token_id is not None:
            raise ValueError(f"{path}: a 2-D token array is used as is; bos_token_id only applies to 1-D streams")
        return TokenSequences.packed(arr.reshape(-1), arr.shape[1], str(path.resolve()))
    if arr.ndim != 1:
        raise ValueError(f"{path}: token array must be 1-D or 2-D; got shape {arr.shape}")
    return TokenSequences.packed(arr, seq_len, str(path.resolve()), bos=bos_token_id, pad=pad_token_id)


def _tokenize_documents(docs: Iterable[str], tokenizer: Any, max_tokens: int | None) -> NDArray[np.int64]:
    """Token ids of the documents joined by the tokenizer's end-of-text token."""
    sep = tokenizer.eos_token_id
    parts: list[list[int]] = []
    total = 0
    for doc in docs:
        if not doc.strip():
            continue
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(
                f"the tokenizer turned the text {doc.strip()[:40]!r} into no tokens: is it the teacher's own "
                "tokenizer (does the model directory hold its tokenizer files)?"
            )
        if sep is not None:
            ids = ids + [sep]
        parts.append(ids)
        total += len(ids)
        if max_tokens is not None and total >= max_tokens:
            break
    stream = np.fromiter((t for p in parts for t in p), dtype=np.int64, count=total)
    return stream[:max_tokens] if max_tokens is not None else stream


def _special_ids(tokenizer: Any, prepend_bos: bool) -> tuple[int | None, int]:
    """(BOS id or None, padding id) of a tokenizer: BOS falls back to end-of-text, padding to end-of-text or 0."""
    bos = tokenizer.bos_token_id if prepend_bos else None
    if prepend_bos and bos is None:
        bos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    return bos, pad


def text_files(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The files named, with directories expanded to the ``.txt`` and ``.md`` files below them (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix in (".txt", ".md") and f.is_file())
            if not found:
                raise ValueError(f"{p}: no .txt or .md files below this directory")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such text file or directory")
    return out


def _read_text(path: Path) -> str:
    """The UTF-8 text of a file; ValueError for a binary or otherwise non-UTF-8 file."""
    data = path.read_bytes()
    if b"\0" in data:
        raise ValueError(f"{path}: not a text file (it holds NUL bytes)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def text_file_sequences(
    paths: Sequence[str | os.PathLike[str]],
    tokenizer: Any,
    seq_len: int,
    *,
    prepend_bos: bool = True,
    max_tokens: int | None = None,
) -> TokenSequences:
    """Plain-text files (directories: their .txt/.md files) tokenized and packed into sequences;
    blank-line-separated paragraphs are documents joined by the end-of-text token; each sequence
    starts with BOS if ``prepend_bos``; at most ``max_tokens`` tokens are read."""
    docs: list[str] = []
    for path in text_files(paths):
        docs += _read_text(path).split("\n\n")
    bos, pad = _special_ids(tokenizer, prepend_bos)
    stream = _tokenize_documents(docs, tokenizer, max_tokens)
    if stream.size == 0:
        raise ValueError(f"{', '.join(map(str, paths))}: no text to tokenize")
    names = ", ".join(str(Path(p).resolve()) for p in paths)
    return TokenSequences.packed(stream, seq_len, names, bos=bos, pad=pad)


def dataset_sequences(
    dataset: Any,
    tokenizer: Any,
    seq_len: int,
    *,
    column: str = "text",
    split: str = "train",
    prepend_bos: bool = True,
    max_tokens: int | None = None,
) -> TokenSequences:
    """A ``datasets`` dataset (an object, or a name/path for ``datasets.load_dataset``) of texts."""
    if isinstance(dataset, (str, os.PathLike)):
        try:
            import datasets  # optional (pyproject: mypy ignores it, installed or not)
        except ImportError as exc:
            raise ImportError("reading a dataset by name needs the 'datasets' package: pip install datasets") from exc
        dataset = datasets.load_dataset(str(dataset), split=split)
    columns = getattr(dataset, "column_names", None)
    if columns is not None and column not in columns:
        raise ValueError(f"the dataset has no column {column!r}; its columns: {', '.join(map(str, columns))}")
    bos, pad = _special_ids(tokenizer, prepend_bos)
    stream = _tokenize_documents((row[column] for row in dataset), tokenizer, max_tokens)
    if stream.size == 0:
        raise ValueError("the dataset holds no text")
    name = getattr(getattr(dataset, "info", None), "dataset_name", None) or type(dataset).__name__
    return TokenSequences.packed(stream, seq_len, f"dataset {name}", bos=bos, pad=pad)


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


class TeacherSource(ActivationSource):
    """A teacher model read at one layer over token sequences, stopped after that layer.

    Each batch is ``max(1, batch_tokens // seq_len)`` sequences, so ``self.batch_tokens`` (the
    positions fed per batch) is that many times ``seq_len``; padding and leading-BOS positions are
    left out of the activations it yields.
    """

    def __init__(
        self,
        model: nn.Module,
        layer: int | str,
        sequences: TokenSequences,
        batch_tokens: int,
        *,
        site: Site = "resid",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.model = model.eval()
        self.layer_name, self.module = find_layer(model, layer, site)
        self.sequences = sequences
        self.batch_sequences = max(1, _check_batch_tokens(batch_tokens) // sequences.seq_len)
        self.batch_tokens = self.batch_sequences * sequences.seq_len
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.dtype = dtype
        get_embeddings = getattr(model, "get_input_embeddings", None)
        embeddings = get_embeddings() if get_embeddings is not None else None
        self._vocab: int | None = getattr(embeddings, "num_embeddings", None)  # token ids must lie below it
        self.d = self._width()

    def _width(self) -> int:
        """The width d of the hooked output: the config's hidden size for a block, else from one forward pass."""
        cfg = getattr(self.model, "config", None)
        if self.layer_name.endswith(".mlp") or cfg is None or not hasattr(cfg, "hidden_size"):
            with torch.no_grad():
                ids, mask = self.sequences.rows(0, 1)
                return int(self._forward(ids[:, :2], mask[:, :2]).shape[-1])
        return int(cfg.hidden_size)

    def describe(self) -> str:
        """The teacher's name, the hooked layer and the sequences' description."""
        name = getattr(getattr(self.model, "config", None), "_name_or_path", "") or type(self.model).__name__
        return f"teacher {name} at {self.layer_name} over {self.sequences.description}"

    def _forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Run the model on [B, T] ids until the hooked module and return its output [B, T, d]."""
        if self._vocab is not None and ids.numel():
            low, high = int(ids.min()), int(ids.max())
            if low < 0 or high >= self._vocab:
                raise ValueError(
                    f"{self.sequences.description}: token id {low if low < 0 else high} is outside "
                    f"the teacher's vocabulary [0, {self._vocab})"
                )
        captured: list[Tensor] = []

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            captured.append(output[0] if isinstance(output, (tuple, list)) else output)
            raise StoppedForward

        handle = self.module.register_forward_hook(hook)
        try:
            with torch.no_grad():
                self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), use_cache=False)
        except StoppedForward:
            pass
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(f"the forward pass never reached {self.layer_name}")
        return captured[0]

    def n_batches(self) -> int:
        """Batches in the whole stream."""
        return -(-len(self.sequences) // self.batch_sequences)

    def batches(self, *, start: int = 0, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        """Batches with index >= ``start`` and index mod ``world`` = ``rank``: the real-token activations
        [tokens, d] of sequences [b·batch_sequences, (b+1)·batch_sequences), on the teacher's device.
        ValueError for a token id outside the teacher's vocabulary."""
        _check_shard(start, rank, world)
        first = start + ((rank - start) % world)
        for b in range(first, self.n_batches(), world):
            ids, mask = self.sequences.rows(b * self.batch_sequences, (b + 1) * self.batch_sequences)
            out = self._forward(ids, mask)
            keep = mask.bool()
            if self.sequences.leading_bos:
                keep[:, 0] = False
            acts = out[keep.to(out.device)]
            yield Batch(b, acts if self.dtype is None else acts.to(self.dtype))


def load_teacher(
    name: str | os.PathLike[str],
    *,
    gguf_file: str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[nn.Module, Any]:
    """A Hugging Face causal LM and its tokenizer from a local directory or a hub id (a local
    directory is read offline); ``gguf_file`` loads a GGUF checkpoint inside that directory.

    Returns the model (in eval mode, in ``dtype`` if given, moved to ``device`` if given) and its
    tokenizer. Raises ImportError without transformers; loading errors of transformers propagate.
    """
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ImportError("reading a teacher needs transformers: pip install 'pyfloor[hf]'") from exc
    local = Path(name).is_dir()
    if local:  # the absolute path: it names the teacher in reports and checkpoints wherever pyfloor runs from
        name = Path(name).resolve()
    kw: dict[str, Any] = {"local_files_only": True} if local else {}
    if gguf_file is not None:
        kw["gguf_file"] = gguf_file
    tokenizer = AutoTokenizer.from_pretrained(str(name), **kw)
    model: nn.Module = AutoModelForCausalLM.from_pretrained(str(name), **kw, **({"dtype": dtype} if dtype else {}))
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer
