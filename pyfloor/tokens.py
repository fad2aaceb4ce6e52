"""Token sequences for a teacher: in-memory ids, token files, text files and datasets, read lazily
or streamed.

A :class:`TokenSequences` is random-access (a memory-mapped file stays on disk; a batch reads only
its own sequences); a :class:`StreamedSequences` reads a corpus once, front to back, tokenizing
documents in batches on a background thread while the teacher runs, and can restart at any batch
boundary it has passed from the position it recorded there (documents read, tokens of the next
document used), so a resumed measurement continues the stream where it stopped.
"""

from __future__ import annotations

import collections
import copy
import itertools
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from . import _checks

__all__ = [
    "Chunk",
    "TokenSequences",
    "StreamedSequences",
    "Sequences",
    "token_file_sequences",
    "text_file_sequences",
    "dataset_sequences",
    "text_files",
]


# -- token sequences ---------------------------------------------------------------------------------
def _pack(tokens: NDArray[np.int64], k: int, seq_len: int, bos: int | None, pad: int) -> tuple[Tensor, Tensor]:
    """``ids`` and ``mask`` [k, seq_len] of ``tokens`` cut into k sequences, each led by ``bos`` when
    given, the rest padded with ``pad`` (mask 0)."""
    first = int(bos is not None)
    body = seq_len - first
    ids = np.full((k, seq_len), pad, dtype=np.int64)
    mask = np.zeros((k, seq_len), dtype=np.int64)
    body_ids = np.full(k * body, pad, dtype=np.int64)
    body_ids[: tokens.size] = tokens
    ids[:, first:] = body_ids.reshape(k, body)
    mask[:, first:] = (np.arange(k * body) < tokens.size).reshape(k, body)
    if bos is not None:
        ids[:, 0], mask[:, 0] = bos, 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


class Chunk(NamedTuple):
    """Consecutive token sequences fed to the teacher together: ``ids`` and ``mask`` [k, seq_len]."""

    index: int  # type: ignore[assignment]  # the field shadows tuple.index by design (public API)
    ids: Tensor
    mask: Tensor


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

        def read(i0: int, i1: int) -> tuple[Tensor, Tensor]:
            return _pack(np.asarray(stream[i0 * body : i1 * body], dtype=np.int64), i1 - i0, seq_len, bos, pad)

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

    def chunks(self, per: int, *, start: int = 0, rank: int = 0, world: int = 1) -> Iterator[Chunk]:
        """Chunks of ``per`` consecutive sequences (chunk c holds sequences [c·per, (c+1)·per)) with
        index >= ``start`` and index mod ``world`` = ``rank``; only those chunks are read."""
        first = start + ((rank - start) % world)
        for c in range(first, -(-len(self) // per), world):
            ids, mask = self.rows(c * per, (c + 1) * per)
            yield Chunk(c, ids, mask)


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


def _document_tokens(
    docs: Iterable[str], tokenizer: Any, *, first: int = 0, per_call: int = 1
) -> Iterator[tuple[int, list[int]]]:
    """(index, token ids + end-of-text) of each non-blank document, the documents numbered from
    ``first`` and tokenized ``per_call`` at a time (one batched call of the tokenizer)."""
    sep = tokenizer.eos_token_id
    pending: list[tuple[int, str]] = []

    def flush() -> Iterator[tuple[int, list[int]]]:
        texts = [t for _, t in pending]
        encoded = tokenizer(texts if len(texts) > 1 else texts[0], add_special_tokens=False)["input_ids"]
        for (i, doc), ids in zip(pending, encoded if len(texts) > 1 else [encoded]):
            if not ids:
                raise ValueError(
                    f"the tokenizer turned the text {doc.strip()[:40]!r} into no tokens: is it the teacher's own "
                    "tokenizer (does the model directory hold its tokenizer files)?"
                )
            yield i, list(ids) + ([sep] if sep is not None else [])
        pending.clear()

    for i, doc in enumerate(docs, start=first):
        if not isinstance(doc, str):
            raise ValueError(f"document {i} is a {type(doc).__name__}, not text")
        if doc.strip():
            pending.append((i, doc))
        if len(pending) >= per_call:
            yield from flush()
    if pending:
        yield from flush()


def _tokenize_documents(docs: Iterable[str], tokenizer: Any, max_tokens: int | None) -> NDArray[np.int64]:
    """Token ids of the documents joined by the tokenizer's end-of-text token."""
    parts: list[list[int]] = []
    total = 0
    for _, ids in _document_tokens(docs, tokenizer):
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


def _dataset_documents(dataset: Any, column: str) -> Callable[[int], Iterable[str]]:
    """``skip ↦`` the texts of ``dataset``'s ``column`` after its first ``skip`` rows (``dataset.skip``
    where the dataset has it, so a streamed dataset does not read what it skips)."""

    def documents(skip: int) -> Iterable[str]:
        rows = dataset.skip(skip) if skip and hasattr(dataset, "skip") else itertools.islice(dataset, skip, None)
        return (row[column] for row in rows)

    return documents


def dataset_sequences(
    dataset: Any,
    tokenizer: Any,
    seq_len: int,
    *,
    column: str = "text",
    split: str = "train",
    prepend_bos: bool = True,
    max_tokens: int | None = None,
    streaming: bool = False,
) -> TokenSequences | StreamedSequences:
    """A ``datasets`` dataset (an object, or a name/path for ``datasets.load_dataset`` with ``split``)
    of texts in ``column``: tokenized into memory, or with ``streaming`` read as a stream
    (:class:`StreamedSequences`; a name is then loaded with ``streaming=True``)."""
    if isinstance(dataset, (str, os.PathLike)):
        try:
            import datasets  # optional (pyproject: mypy ignores it, installed or not)
        except ImportError as exc:
            raise ImportError("reading a dataset by name needs the 'datasets' package: pip install datasets") from exc
        dataset = datasets.load_dataset(str(dataset), split=split, streaming=streaming)
    columns = getattr(dataset, "column_names", None)
    if columns is not None and column not in columns:
        raise ValueError(f"the dataset has no column {column!r}; its columns: {', '.join(map(str, columns))}")
    name = getattr(getattr(dataset, "info", None), "dataset_name", None) or type(dataset).__name__
    if streaming:
        return StreamedSequences(
            _dataset_documents(dataset, column),
            tokenizer,
            seq_len,
            f"dataset {name} (streamed)",
            prepend_bos=prepend_bos,
            max_tokens=max_tokens,
        )
    bos, pad = _special_ids(tokenizer, prepend_bos)
    stream = _tokenize_documents((row[column] for row in dataset), tokenizer, max_tokens)
    if stream.size == 0:
        raise ValueError("the dataset holds no text")
    return TokenSequences.packed(stream, seq_len, f"dataset {name}", bos=bos, pad=pad)


class StreamedSequences:
    """Token sequences packed as :meth:`TokenSequences.packed` packs them, from a corpus read once,
    front to back: ``documents(skip)`` gives the texts after the first ``skip`` documents. Documents
    are tokenized ``per_call`` at a time on a background thread that stays up to ``prefetch`` chunks
    ahead of the teacher. At most ``max_tokens`` tokens are read; :meth:`skip` leaves out the
    sequences holding the first tokens.

    Each chunk's start is recorded as a position (:meth:`position`: the sequence, the documents
    read before it and the tokens of the next ones already used); :meth:`seek` to a recorded
    position makes the next :meth:`chunks` start there without reading what lies before it.
    """

    leading_bos: bool

    def __init__(
        self,
        documents: Callable[[int], Iterable[str]],
        tokenizer: Any,
        seq_len: int,
        description: str,
        *,
        prepend_bos: bool = True,
        max_tokens: int | None = None,
        per_call: int = 256,
        prefetch: int = 4,
    ) -> None:
        _checks.count(seq_len, "seq_len", minimum=2)
        if max_tokens is not None:
            _checks.count(max_tokens, "max_tokens", minimum=1)
        self._documents, self._tokenizer = documents, tokenizer
        self.seq_len, self.description = seq_len, description
        self._bos, self._pad = _special_ids(tokenizer, prepend_bos)
        self.leading_bos = self._bos is not None
        self._body = seq_len - self.leading_bos
        self.max_tokens = max_tokens
        self._per_call = _checks.count(per_call, "per_call", minimum=1)
        self._prefetch = _checks.count(prefetch, "prefetch", minimum=1)
        self._skip = 0  # sequences left out at the front
        self._positions: dict[int, dict[str, int]] = {}  # chunk index → where it starts (recent chunks)
        self._seek: tuple[int, dict[str, int]] | None = None

    def skip(self, n_tokens: int) -> StreamedSequences:
        """These sequences without those holding the first ``n_tokens`` tokens (rounded up to whole sequences)."""
        out = copy.copy(self)
        out._skip = self._skip + -(-_checks.count(n_tokens, "n_tokens") // self.seq_len)
        out._positions, out._seek = {}, None
        out.description = f"{self.description} [from seq {out._skip}]"
        return out

    def position(self, chunk: int) -> dict[str, int] | None:
        """Where chunk ``chunk`` of the last :meth:`chunks` starts, if it was reached recently (None otherwise)."""
        return self._positions.get(chunk)

    def seek(self, chunk: int, position: dict[str, int]) -> None:
        """Make the next :meth:`chunks` (with ``start=chunk``) begin at ``position`` (from :meth:`position`)."""
        for key in ("sequence", "documents", "offset"):
            if not isinstance(position.get(key), int) or position[key] < 0:
                raise ValueError(f"not a stream position: {position!r}")
        self._seek = (chunk, dict(position))

    def _sequences(
        self, sequence: int, documents: int, offset: int
    ) -> Iterator[tuple[int, dict[str, int], NDArray[np.int64]]]:
        """(sequence, the position after it, its body tokens) of each sequence from ``sequence`` on,
        reading from document ``documents`` after dropping ``offset`` of its tokens; only the last body may be short."""
        limit = None if self.max_tokens is None else self.max_tokens - sequence * self._body
        queue: collections.deque[tuple[int, list[int]]] = collections.deque()  # documents not fully used
        held = -offset  # tokens of the queued documents not yet used
        done = documents  # documents read and used up
        docs = _document_tokens(self._documents(documents), self._tokenizer, first=documents, per_call=self._per_call)
        exhausted = False
        while limit is None or limit > 0:
            while held < self._body and not exhausted:
                item = next(docs, None)
                exhausted = item is None
                if item is not None:
                    queue.append(item)
                    held += len(item[1])
            take = min(self._body, held, self._body if limit is None else limit)
            if take <= 0:
                return
            body = np.empty(take, dtype=np.int64)
            filled = 0
            while filled < take:
                index, ids = queue[0]
                n = min(take - filled, len(ids) - offset)
                body[filled : filled + n] = ids[offset : offset + n]
                filled, offset = filled + n, offset + n
                if offset == len(ids):
                    queue.popleft()
                    done, offset = index + 1, 0
            held -= take
            limit = None if limit is None else limit - take
            after = {"sequence": sequence + 1, "documents": queue[0][0] if queue else done, "offset": offset}
            yield sequence, after, body
            if take < self._body:
                return
            sequence += 1

    def _start(self, per: int, start: int) -> tuple[int, int, int]:
        """(sequence, documents, offset) to read from for chunk ``start``: the sought position, or the
        stream's beginning (the sequences before the chunk are then read and dropped)."""
        first = self._skip + start * per
        sought, self._seek = self._seek, None
        if sought is None or sought[0] != start:
            return 0, 0, 0
        position = sought[1]
        if position["sequence"] != first:
            raise ValueError(
                f"the stream position is at sequence {position['sequence']}, but chunk {start} of "
                f"{per} sequences starts at sequence {first}"
            )
        return first, position["documents"], position["offset"]

    def _chunks(self, per: int, start: int) -> Iterator[tuple[Chunk, dict[str, int] | None]]:
        """Every chunk from ``start`` on, each with the position of the chunk after it (None after the last)."""
        first = self._skip + start * per
        rows: list[NDArray[np.int64]] = []
        after: dict[str, int] | None = None
        for s, after, body in self._sequences(*self._start(per, start)):
            if s < first:
                continue
            rows.append(body)
            if len(rows) == per:
                yield self._chunk(s, per, rows), after
                rows = []
        if rows:
            yield self._chunk(s, per, rows), None

    def _chunk(self, last: int, per: int, rows: list[NDArray[np.int64]]) -> Chunk:
        """The chunk of ``per`` sequences whose sequences end at sequence ``last`` with these bodies."""
        ids, mask = _pack(np.concatenate(rows), len(rows), self.seq_len, self._bos, self._pad)
        return Chunk((last - len(rows) + 1 - self._skip) // per, ids, mask)

    def chunks(self, per: int, *, start: int = 0, rank: int = 0, world: int = 1) -> Iterator[Chunk]:
        """Chunks of ``per`` consecutive sequences with index >= ``start`` and index mod ``world`` =
        ``rank`` (every chunk is tokenized; the others are dropped), prepared on a background thread;
        the start of each chunk reached is kept for :meth:`position`."""
        _checks.count(per, "per", minimum=1)
        self._positions = {}
        keep = 2 * self._prefetch + 2 * world + 8  # the chunks a caller may still ask the position of
        for chunk, after in _background(self._chunks(per, start), self._prefetch):
            if after is not None:
                self._positions[chunk.index + 1] = after
                self._positions.pop(chunk.index + 1 - keep, None)
            if chunk.index % world == rank:
                yield chunk


_DONE = object()


def _background(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """The items of ``items``, produced on a background thread at most ``depth`` ahead of the
    consumer; its exceptions are raised here, and closing this generator stops the thread."""
    out: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        out.put((True, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            out.put((True, _DONE))
        except BaseException as exc:  # handed to the consumer, raised there
            out.put((False, exc))

    thread = threading.Thread(target=produce, name="pyfloor-tokens", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = out.get()
            if not ok:
                raise item
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # let a producer blocked on a full queue see the stop
            try:
                out.get_nowait()
            except queue.Empty:
                thread.join(0.05)


#: Token sequences a teacher source reads: random-access or streamed
Sequences = TokenSequences | StreamedSequences
