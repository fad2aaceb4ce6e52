"""Streamed corpora (pyfloor.tokens.StreamedSequences): packing, positions, and resumed measurements."""

import json

import numpy as np
import pytest
import torch
from test_layers import fitted_sae

from pyfloor.measure import MeasureConfig, measure
from pyfloor.sources import TeacherSource
from pyfloor.tokens import StreamedSequences, dataset_sequences

WORDS = "to be or not that is the question whether tis nobler in mind suffer slings arrows".split()


class WordTokenizer:
    """One id per character (4 … 89), texts one at a time or in lists, as fast tokenizers take them."""

    eos_token_id, bos_token_id, pad_token_id = 1, 2, 0

    def __call__(self, text, add_special_tokens=False):
        one = lambda t: [4 + ord(c) % 86 for c in t]
        return {"input_ids": [one(t) for t in text] if isinstance(text, list) else one(text)}


def documents(n=40, seed=0):
    rng = np.random.default_rng(seed)
    docs = [" ".join(rng.choice(WORDS, rng.integers(1, 12))) for _ in range(n)]
    docs[5] = "   "  # a blank document contributes nothing
    return docs


class Rows(list):
    """A re-iterable dataset of rows, counting the rows it is asked to skip."""

    column_names = ["text"]

    def __init__(self, docs):
        super().__init__({"text": d} for d in docs)
        self.skipped = []

    def skip(self, n):
        self.skipped.append(n)
        return self[n:]


def all_chunks(seqs, per, **kw):
    return [(c.index, c.ids, c.mask) for c in seqs.chunks(per, **kw)]


def position_at(seqs, per, index):
    """The recorded start of chunk ``index``, read by a reader that stops there (as a killed measurement does)."""
    for chunk in seqs.chunks(per):
        if chunk.index == index:
            break
    return seqs.position(index)


@pytest.mark.parametrize("prepend_bos", [True, False])
@pytest.mark.parametrize("max_tokens", [None, 333])
def test_a_stream_packs_as_the_in_memory_sequences_do(prepend_bos, max_tokens):
    docs = documents()
    kw = dict(prepend_bos=prepend_bos, max_tokens=max_tokens)
    memory = dataset_sequences(Rows(docs), WordTokenizer(), 16, **kw)
    stream = dataset_sequences(Rows(docs), WordTokenizer(), 16, streaming=True, **kw)
    assert isinstance(stream, StreamedSequences) and stream.leading_bos == memory.leading_bos
    for per, rank, world in ((3, 0, 1), (4, 1, 2), (1, 0, 3)):
        a, b = all_chunks(memory, per, rank=rank, world=world), all_chunks(stream, per, rank=rank, world=world)
        assert [i for i, *_ in a] == [i for i, *_ in b] and len(a) > 1
        for (_, ia, ma), (_, ib, mb) in zip(a, b):
            assert torch.equal(ia, ib) and torch.equal(ma, mb)
    skipped = all_chunks(stream.skip(40), 3)
    assert all(torch.equal(x[1], y[1]) for x, y in zip(skipped, all_chunks(memory.skip(40), 3)))


def test_a_recorded_position_restarts_the_stream_without_reading_what_lies_before():
    rows = Rows(documents(60))
    through = all_chunks(dataset_sequences(rows, WordTokenizer(), 12, streaming=True), 2)
    seqs = dataset_sequences(rows, WordTokenizer(), 12, streaming=True)
    position = position_at(seqs, 2, 5)
    assert position is not None and position["sequence"] == 10 and position["documents"] > 0
    again = dataset_sequences(rows, WordTokenizer(), 12, streaming=True)
    again.seek(5, position)
    rest = all_chunks(again, 2, start=5)
    assert rows.skipped == [position["documents"]]  # the earlier documents were never read
    assert [i for i, *_ in rest] == [i for i, *_ in through[5:]]
    assert all(torch.equal(x[1], y[1]) and torch.equal(x[2], y[2]) for x, y in zip(rest, through[5:]))
    again.seek(4, position)
    with pytest.raises(ValueError, match="the stream position is at sequence 10, but chunk 4 of 2 sequences"):
        next(again.chunks(2, start=4))
    with pytest.raises(ValueError, match="not a stream position"):
        again.seek(5, {"sequence": 10})


def test_errors_of_the_tokenizer_thread_reach_the_reader():
    seqs = StreamedSequences(lambda skip: ["fine text", 42], WordTokenizer(), 8, "bad rows", per_call=1)
    with pytest.raises(ValueError, match="document 1 is a int, not text"):
        list(seqs.chunks(1))


def streamed_source(model, docs):
    seqs = dataset_sequences(docs, WordTokenizer(), 16, streaming=True)
    return TeacherSource(model, 1, seqs, batch_tokens=32)


def test_a_streamed_measurement_killed_and_resumed_equals_an_uninterrupted_one(tiny_neox, tmp_path):
    docs = Rows(documents(80))
    sae = fitted_sae(streamed_source(tiny_neox, docs), "gpt_neox.layers.1")
    config = MeasureConfig(bootstrap=4, histograms=False, checkpoint_every=1, seed=3)
    whole = measure(streamed_source(tiny_neox, docs), sae, config, progress=False)

    class Killed(Exception):
        pass

    def kill(index, rows):
        if index == 4:
            raise Killed

    ckpt = tmp_path / "m.ckpt"
    cfg = MeasureConfig(**{**config.__dict__, "checkpoint": ckpt})
    with pytest.raises(Killed):
        measure(streamed_source(tiny_neox, docs), sae, cfg, progress=False, on_batch=kill)
    docs.skipped.clear()
    resumed = measure(
        streamed_source(tiny_neox, docs), sae, MeasureConfig(**{**cfg.__dict__, "resume": True}), progress=False
    )
    assert docs.skipped and docs.skipped[0] > 0  # the resumed run started inside the corpus
    assert resumed.stats.n_tokens == whole.stats.n_tokens and resumed.n_batches == whole.n_batches
    for field in ("fire_count", "margin_count", "act_sum", "act_sq_sum", "act_max"):
        assert np.array_equal(getattr(resumed.stats, field), getattr(whole.stats, field)), field
    assert resumed.intervals == whole.intervals


def test_datasets_streams_a_local_corpus(tmp_path):
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "corpus.jsonl"
    docs = documents(30)
    path.write_text("\n".join(json.dumps({"body": d}) for d in docs))
    streamed = datasets.load_dataset("json", data_files=str(path), split="train", streaming=True)
    seqs = dataset_sequences(streamed, WordTokenizer(), 16, column="body", streaming=True)
    memory = dataset_sequences(Rows(docs), WordTokenizer(), 16)
    a, b = all_chunks(seqs, 2), all_chunks(memory, 2)
    assert len(a) == len(b) and all(torch.equal(x[1], y[1]) for x, y in zip(a, b))
    position = position_at(seqs, 2, 3)
    again = dataset_sequences(streamed, WordTokenizer(), 16, column="body", streaming=True)
    again.seek(3, position)
    assert all(torch.equal(x[1], y[1]) for x, y in zip(all_chunks(again, 2, start=3), a[3:]))
