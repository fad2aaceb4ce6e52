"""pyfloor.students and pyfloor.distill on a CPU: tiny random teachers, students of widths 16 and 32."""

import json
import math
import os

import numpy as np
import pytest
import torch

from pyfloor.distill import DistillConfig, distill, distill_kl, split_train_eval
from pyfloor.stats import CheckpointError
from pyfloor.students import make_students, student_config
from pyfloor.tokens import StreamedSequences, TokenSequences

transformers = pytest.importorskip("transformers")

WIDTHS = (16, 32)
VOCAB = 97


def tiny_config(cls, **kw):
    """A config of class ``cls`` at width 64: 2 blocks of 4 heads, vocabulary VOCAB."""
    common = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 64}
    return cls(vocab_size=VOCAB, **common, **kw)


def neox_config():
    """The Pythia architecture; dropout in the blocks, so students draw dropout masks."""
    return tiny_config(transformers.GPTNeoXConfig, intermediate_size=256, hidden_dropout=0.1)


def llama_config():
    return tiny_config(transformers.LlamaConfig, intermediate_size=128, num_key_value_heads=2)


def teacher_from(config, seed=0):
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: these models are tiny, and on a busy two-core machine a second thread
    waiting for a core makes every layer norm 20× slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def neox():
    return teacher_from(neox_config())


def sequences(n_seq=24, seq_len=16, seed=0):
    """Random token ids packed into ``n_seq`` sequences led by BOS (id 0), the last one padded."""
    body = seq_len - 1
    stream = np.random.default_rng(seed).integers(1, VOCAB, n_seq * body - 5)
    return TokenSequences.packed(stream, seq_len, "random ids", bos=0, pad=0)


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_student(a, b):
    """Bit-identical weights and curves of two StudentResults."""
    sa, sb = a.student.state_dict(), b.student.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert a.train_curve == b.train_curve
    assert a.eval_curve == b.eval_curve


def run(teacher, widths, config, *, train=None, held_out=None, per=2, seed=0, **kw):
    if train is None:
        train, held_out = split_train_eval(sequences(), 64)
    students = make_students(teacher.config, widths, seed=seed)
    return distill(teacher, students, train, held_out, config, batch_sequences=per, progress=False, **kw)


# -- students -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("width", "heads"), [(16, 1), (24, 1), (32, 2), (48, 2), (64, 4), (96, 4), (128, 8), (256, 16), (1024, 16)]
)
def test_student_heads_ffn_and_depth_for_each_architecture(width, heads):
    smol = transformers.LlamaConfig(
        hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536
    )
    gpt2 = transformers.GPT2Config(n_embd=64, n_layer=3, n_head=4, vocab_size=VOCAB, bos_token_id=0, eos_token_id=0)
    for teacher in (neox_config(), llama_config(), smol, gpt2):
        c = student_config(teacher, width)
        assert (c.hidden_size, c.num_attention_heads, c.num_hidden_layers) == (
            width,
            heads,
            teacher.num_hidden_layers,
        )
        assert c.vocab_size == teacher.vocab_size
        assert c.max_position_embeddings == teacher.max_position_embeddings
        assert type(c) is type(teacher)
    gs = student_config(gpt2, width, ffn_ratio=2)
    assert (gs.n_embd, gs.n_head, gs.n_inner, gs.n_layer) == (width, heads, 2 * width, 3)
    ns = student_config(neox_config(), width)
    assert ns.intermediate_size == 4 * width
    assert ns.rope_parameters == neox_config().rope_parameters and ns.hidden_dropout == 0.1
    ls = student_config(smol, width)
    assert ls.intermediate_size == 4 * width and ls.head_dim == width // heads
    assert ls.num_key_value_heads == max(d for d in (1, 2, 3) if heads % d == 0)  # ≤ the teacher's 3
    assert student_config(llama_config(), width).num_key_value_heads == min(2, heads)


def test_student_config_errors_and_make_students_seeding():
    with pytest.raises(ValueError, match="width must be at least 16"):
        student_config(neox_config(), 8)
    with pytest.raises(ValueError, match="width must be an integer >= 1"):
        student_config(neox_config(), 0)
    with pytest.raises(ValueError, match="ffn_ratio"):
        student_config(neox_config(), 32, ffn_ratio=0)
    with pytest.raises(ValueError, match="no feed-forward size"):
        student_config(transformers.PretrainedConfig(hidden_size=64, num_attention_heads=4), 32)
    with pytest.raises(ValueError, match="widths must not repeat"):
        make_students(neox_config(), [16, 16], seed=0)
    family = make_students(neox_config(), [16, 32], seed=3)
    alone = make_students(neox_config(), [32], seed=3)[32]
    for k, v in alone.state_dict().items():
        assert torch.equal(family[32].state_dict()[k], v)
    assert type(family[16]).__name__ == "GPTNeoXForCausalLM" and family[16].config.hidden_size == 16


# -- the loss -------------------------------------------------------------------------------------------
def test_distill_kl_is_a_per_token_mean_over_real_positions():
    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(3, 5, 11, generator=g) * 3, torch.randn(3, 5, 11, generator=g) * 3
    mask = torch.ones(3, 5, dtype=torch.int64)
    mask[0, 3:] = 0
    mask[2, 1:] = 0
    T = 2.0
    total, n = 0.0, 0
    for b in range(3):
        for i in range(5):
            if mask[b, i]:
                p = torch.softmax(t[b, i].double() / T, -1)
                q = torch.softmax(s[b, i].double() / T, -1)
                total += sum(float(p[v] * (math.log(p[v]) - math.log(q[v]))) for v in range(11))
                n += 1
    direct = total / n * T * T
    got = distill_kl(t, s, mask, T)
    assert got.dtype == torch.float32 and got.shape == ()
    assert float(got) == pytest.approx(direct, rel=1e-6)
    batchmean = torch.nn.functional.kl_div(
        torch.log_softmax(s / T, -1), torch.softmax(t / T, -1), reduction="batchmean"
    ) * (T * T)  # over [B, S, V]: summed over positions, divided by B, padding included
    assert abs(float(batchmean) - direct) > 0.5 * direct
    assert float(distill_kl(t.bfloat16(), s, mask.bool(), T)) == pytest.approx(direct, rel=2e-2)
    s.requires_grad_(True)
    distill_kl(t, s, mask, T).backward()
    assert s.grad is not None and torch.all(s.grad[mask == 0] == 0)
    with pytest.raises(ValueError, match="one shape"):
        distill_kl(t, s[:, :, :5], mask, T)
    with pytest.raises(ValueError, match="mask must be"):
        distill_kl(t, s, mask[:, :4], T)
    with pytest.raises(ValueError, match="selects no position"):
        distill_kl(t, s, torch.zeros_like(mask), T)
    with pytest.raises(ValueError, match="temperature"):
        distill_kl(t, s, mask, 0.0)


# -- the schedule ---------------------------------------------------------------------------------------
def test_schedule_warms_up_then_decays_on_a_cosine(neox, monkeypatch):
    c = DistillConfig(steps=100)
    assert c.warmup == 5
    assert c.learning_rate(0) == 0.0
    assert c.learning_rate(1) == pytest.approx(3e-4 / 5)
    assert c.learning_rate(5) == 3e-4
    assert c.learning_rate(99) == pytest.approx(3e-4 * 0.5 * (1 + math.cos(math.pi * 94 / 95)))
    assert 0 < c.learning_rate(99) < 1e-6
    assert DistillConfig(steps=10, warmup_steps=0).learning_rate(0) == 3e-4

    used = []
    step = torch.optim.AdamW.step

    def recording(self, *a, **k):
        used.append(self.param_groups[0]["lr"])
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording)
    c = DistillConfig(steps=6, warmup_steps=2, eval_every=100)
    run(neox, [16], c)
    assert used == [c.learning_rate(s) for s in range(6)]
    assert used[0] == 0.0 and used[2] == c.lr


def test_config_errors_name_the_setting():
    for kw, match in [
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"temperature": 0}, "temperature"),
        ({"lr": -1.0}, "lr"),
        ({"betas": (1.0, 0.9)}, r"betas\[0\]"),
        ({"betas": (0.9,)}, "betas must be two numbers"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"steps": 10, "warmup_steps": 11}, "warmup_steps must be <= steps"),
        ({"grad_clip": 0.0}, "grad_clip"),
        ({"eval_every": 0}, "eval_every"),
        ({"checkpoint_every": 0}, "checkpoint_every"),
        ({"resume": True}, "resume needs a checkpoint"),
        ({"resume": True, "overwrite": True, "checkpoint": "c.safetensors"}, "exclude each other"),
    ]:
        with pytest.raises(ValueError, match=match):
            DistillConfig(**kw)


# -- the loop -------------------------------------------------------------------------------------------
@pytest.mark.numerics
def test_one_pass_over_a_family_equals_each_width_alone(neox):
    config = DistillConfig(steps=5, eval_every=2)
    family = run(neox, WIDTHS, config)
    for w in WIDTHS:
        alone = run(neox, [w], config)
        assert_same_student(family.students[w], alone.students[w])
    s16 = family.students[16]
    assert [s for s, _ in s16.train_curve] == [1, 2, 3, 4, 5]
    assert [s for s, _ in s16.eval_curve] == [0, 2, 4, 5]
    assert s16.eval_curve[-1][1] < s16.eval_curve[0][1]  # it learns
    assert family.steps == 5 and family.train_tokens == 5 * 2 * 15  # BOS left out, no padding in these batches
    d = json.loads(json.dumps(family.to_dict()))
    assert d["config"]["warmup_steps"] == 1 and d["config"]["batch_sequences"] == 2
    assert d["students"]["32"]["eval_curve"][0][0] == 0 and d["students"]["16"]["n_parameters"] > 0
    assert not family.students[16].student.training


class NumberTokenizer:
    """Each word of a document, a number, is one token (2 + number mod (VOCAB − 2)); 1 ends a document."""

    bos_token_id, eos_token_id, pad_token_id = 0, 1, 0

    def __call__(self, texts, add_special_tokens=False):
        one = isinstance(texts, str)
        ids = [[2 + int(w) % (VOCAB - 2) for w in t.split()] for t in ([texts] if one else texts)]
        return {"input_ids": ids[0] if one else ids}


def train_data(streamed):
    """Fresh (train, eval) sequences: a split TokenSequences, or documents streamed past a separate eval set."""
    if not streamed:
        return split_train_eval(sequences(), 64)
    rng = np.random.default_rng(1)
    docs = [" ".join(map(str, rng.integers(0, 1000, rng.integers(3, 30)))) for _ in range(40)]
    stream = StreamedSequences(lambda skip: docs[skip:], NumberTokenizer(), 16, "numbers", per_call=4, prefetch=2)
    return stream, sequences(n_seq=4, seed=2)


@pytest.mark.numerics
@pytest.mark.parametrize("streamed", [False, True], ids=["token sequences", "streamed"])
def test_resume_after_a_kill_is_bit_identical(neox, tmp_path, streamed):
    steps = 6
    seen = []
    config = DistillConfig(steps=steps, eval_every=2, checkpoint=tmp_path / "a.safetensors")
    train, held_out = train_data(streamed)
    whole = run(neox, WIDTHS, config, train=train, held_out=held_out, on_step=lambda r: seen.append(r.batch))
    path = tmp_path / "b.safetensors"
    config = DistillConfig(steps=steps, eval_every=2, checkpoint=path, checkpoint_every=2)

    def kill(report):
        if report.step == 5:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        run(neox, WIDTHS, config, train=train, held_out=held_out, on_step=kill)
    with pytest.raises(CheckpointError, match="already exists"):
        run(neox, WIDTHS, config, train=train, held_out=held_out)
    changed = DistillConfig(steps=steps, eval_every=2, lr=1e-3, checkpoint=path, resume=True)
    with pytest.raises(CheckpointError, match="different run.*lr"):
        run(neox, WIDTHS, changed, train=train, held_out=held_out)
    train, held_out = train_data(streamed)  # as a new process would make them
    resumed_batches = []
    resumed = run(
        neox,
        WIDTHS,
        DistillConfig(steps=steps, eval_every=2, checkpoint=path, checkpoint_every=2, resume=True),
        train=train,
        held_out=held_out,
        on_step=lambda r: resumed_batches.append(r.batch),
    )
    assert [b.index for b in resumed_batches] == [4, 5]  # from the checkpoint of step 4
    assert all(torch.equal(a.ids, b.ids) for a, b in zip(resumed_batches, seen[4:]))
    for w in WIDTHS:
        assert_same_student(whole.students[w], resumed.students[w])
    assert resumed.train_tokens == whole.train_tokens
    finished = DistillConfig(steps=steps, eval_every=2, checkpoint=path, resume=True)
    again = run(neox, WIDTHS, finished, train=train, held_out=held_out)
    assert_same_student(again.students[16], whole.students[16])  # a finished run resumes to its result
    restarted = run(neox, [16], DistillConfig(steps=2, checkpoint=path, overwrite=True), train=train, held_out=held_out)
    assert restarted.steps == 2
    with pytest.raises(CheckpointError, match="different run.*students"):
        run(neox, [32], DistillConfig(steps=2, checkpoint=path, resume=True), train=train, held_out=held_out)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt"):
        run(neox, [16], DistillConfig(steps=2, checkpoint=path, resume=True), train=train, held_out=held_out)
    (tmp_path / "other.txt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a pyfloor"):
        other = DistillConfig(steps=2, checkpoint=tmp_path / "other.txt", overwrite=True)
        run(neox, [16], other, train=train, held_out=held_out)


def test_eval_tokens_are_never_trained_on(neox):
    data = sequences()
    train, held_out = split_train_eval(data, 64)
    assert len(held_out) == 4 and len(train) == len(data) - 4
    seen = []
    run(neox, [16], DistillConfig(steps=10), train=train, held_out=held_out, on_step=lambda r: seen.append(r.batch))
    eval_rows = {tuple(r) for r in held_out.rows()[0][:, 1:].tolist()}
    trained = [tuple(r) for b in seen for r in b.ids[:, 1:].tolist()]
    assert len(trained) == 20 and not eval_rows & set(trained)
    assert [b.index for b in seen] == list(range(10))
    with pytest.raises(ValueError, match="share sequences"):
        run(neox, [16], DistillConfig(steps=2), train=data, held_out=data.take(64))
    with pytest.raises(ValueError, match="share sequences 0…3"):
        run(neox, [16], DistillConfig(steps=2), train=data.take(10**6), held_out=held_out)
    with pytest.raises(ValueError, match="need 12 batches"):
        run(neox, [16], DistillConfig(steps=12), train=train, held_out=held_out)
    with pytest.raises(ValueError, match="nothing is left to train on"):
        split_train_eval(data, 10**6)


def test_students_on_their_own_devices_and_bad_arguments(neox):
    train, held_out = split_train_eval(sequences(), 64)
    students = make_students(neox.config, WIDTHS, seed=0)
    r = distill(
        neox, students, train, held_out, DistillConfig(steps=2), batch_sequences=2, devices={16: "cpu"}, progress=False
    )
    assert r.students[16].student.device.type == "cpu"
    with pytest.raises(ValueError, match="devices names widths with no student"):
        distill(neox, students, train, held_out, DistillConfig(steps=2), batch_sequences=2, devices={64: "cpu"})
    with pytest.raises(ValueError, match="batch_sequences"):
        distill(neox, students, train, held_out, DistillConfig(steps=2), batch_sequences=0)
    with pytest.raises(ValueError, match="eval must be TokenSequences"):
        distill(neox, students, train, None, DistillConfig(steps=2), batch_sequences=2)
    with pytest.raises(ValueError, match="vocabulary"):
        bad = TokenSequences(torch.full((8, 8), VOCAB + 3), torch.ones(8, 8, dtype=torch.int64), "out of range")
        distill(neox, students, bad, held_out, DistillConfig(steps=2), batch_sequences=2, progress=False)


# -- distributed ----------------------------------------------------------------------------------------
class TinyLM(torch.nn.Module):
    """A causal LM that starts at once in a fresh process: token embeddings, their running mean over
    the real tokens so far, a head; called as a Hugging Face model is, it returns the logits."""

    def __init__(self, width, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = torch.nn.Embedding(VOCAB, width)
        self.mix = torch.nn.Linear(2 * width, width)
        self.head = torch.nn.Linear(width, VOCAB)

    def forward(self, input_ids, attention_mask, use_cache=False):
        m = attention_mask[..., None].float()
        x = self.embed(input_ids) * m
        context = x.cumsum(1) / m.cumsum(1).clamp_min(1)
        return self.head(torch.tanh(self.mix(torch.cat([x, context], -1))))


def tiny_run(per, checkpoint=None, **kw):
    """3 steps of TinyLM students of WIDTHS from a TinyLM teacher, ``per`` sequences a batch."""
    train, held_out = split_train_eval(sequences(), 64)
    students = {w: TinyLM(w, seed=1) for w in WIDTHS}
    config = DistillConfig(steps=3, eval_every=2, checkpoint=checkpoint)
    return distill(TinyLM(64, seed=0), students, train, held_out, config, batch_sequences=per, **kw)


def _rank_main(rank, world, init_file, out_dir):
    torch.set_num_threads(1)  # two processes on two cores
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        batches = []
        checkpoint = os.path.join(out_dir, "c.safetensors")
        r = tiny_run(2, checkpoint, progress=rank == 0, on_step=lambda s: batches.append(s.batch.index))
        torch.save(
            {
                "weights": {w: s.student.state_dict() for w, s in r.students.items()},
                "curves": {w: (s.train_curve, s.eval_curve) for w, s in r.students.items()},
                "batches": batches,
                "tokens": r.train_tokens,
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.numerics
def test_two_gloo_ranks_average_gradients_like_one_process_with_their_batches(tmp_path):
    torch.multiprocessing.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    assert sorted(p.name for p in tmp_path.glob("c.rank*")) == ["c.rank0-of-2.safetensors", "c.rank1-of-2.safetensors"]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert ranks[0]["batches"] == [0, 2, 4] and ranks[1]["batches"] == [1, 3, 5]
    for w in WIDTHS:
        for k, v in ranks[0]["weights"][w].items():
            assert torch.equal(v, ranks[1]["weights"][w][k]), k  # every rank holds the same students
        assert ranks[0]["curves"][w] == ranks[1]["curves"][w]
    # one process, batches of 4 = the two ranks' batches of 2 together (equal token counts: the mean of means)
    one = tiny_run(4, progress=False)
    assert ranks[0]["tokens"] == one.train_tokens
    for w in WIDTHS:
        s = one.students[w]
        train_two, eval_two = ranks[0]["curves"][w]
        np.testing.assert_allclose([v for _, v in train_two], [v for _, v in s.train_curve], rtol=1e-5)
        np.testing.assert_allclose([v for _, v in eval_two], [v for _, v in s.eval_curve], rtol=1e-5)
        for k, v in s.student.state_dict().items():
            torch.testing.assert_close(ranks[0]["weights"][w][k], v, rtol=1e-4, atol=1e-5)
