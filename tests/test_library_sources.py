"""pyfloor.library_sources: TransformerLens and nnsight teachers against the libraries' own full forward passes."""

import warnings

import numpy as np
import pytest
import torch

from pyfloor.library_sources import LensSource, NNsightSource, library_source
from pyfloor.measure import MeasureConfig, measure
from pyfloor.sae import SAE
from pyfloor.sources import ArraySource, TeacherSource, TokenSequences

VOCAB = 50
SEQ_LEN = 12
BOS = 1


def sequences(n_tokens=70, bos=BOS, seed=0):
    """Random token ids packed into sequences of SEQ_LEN (each led by ``bos``; the last one padded)."""
    stream = np.random.default_rng(seed).integers(2, VOCAB, n_tokens)
    return TokenSequences.packed(stream, SEQ_LEN, "random tokens", bos=bos, pad=0)


def left_padded(seed=0):
    """Sequences whose masks open with padding: the attention mask changes what the real tokens see."""
    ids = torch.from_numpy(np.random.default_rng(seed).integers(2, VOCAB, (6, SEQ_LEN)))
    mask = torch.ones_like(ids)
    mask[1, :3] = mask[4, :5] = 0
    return TokenSequences(ids, mask, "left-padded tokens")


def random_sae(d, m=48, seed=0, scale=1.0):
    """A ReLU SAE with random directions of norm ``scale`` and a bias that leaves latents silent on many tokens."""
    g = torch.Generator().manual_seed(seed)
    sae = SAE(d, m)
    with torch.no_grad():
        w = torch.randn(d, m, generator=g)
        sae.W_enc.copy_(scale * w / w.norm(dim=0))
        sae.W_dec.copy_(sae.W_enc.T)
        sae.b_enc.fill_(-0.5)
        sae.b_dec.zero_()
    return sae


def kept(mask, leading_bos):
    """The [B, T] positions a source yields: real tokens, without a leading BOS."""
    keep = mask.bool().clone()
    if leading_bos:
        keep[:, 0] = False
    return keep


def assert_batches_equal(source, reference):
    """Every batch of ``source`` holds, layer by layer, exactly what ``reference(ids, mask)`` gives
    (a dict of [B, T, d] by layer name) at the kept positions; returns the rows yielded."""
    rows = 0
    chunks = source.sequences.chunks(source.batch_sequences)
    for batch, chunk in zip(source.batches(), chunks, strict=True):
        assert batch.index == chunk.index
        full = reference(chunk.ids, chunk.mask)
        keep = kept(chunk.mask, source.sequences.leading_bos)
        assert set(batch.layers) == set(source.layer_names)
        for name in source.layer_names:
            torch.testing.assert_close(batch.layers[name], full[name][keep], rtol=0, atol=0)
        assert torch.equal(batch.acts, batch.layers[source.layer_names[0]])
        rows += int(keep.sum())
    return rows


def assert_same_statistics(source, reference):
    """pyfloor's measurement of ``source`` equals that of the reference activations [N, d] read
    from arrays in batches of the same size: fire counts exactly, sums within 1e-6."""
    sae = random_sae(source.d, scale=1 / float(reference.std()))  # projections of O(1)
    config = MeasureConfig(bootstrap=0, histograms=False)
    got = measure(source, sae, config, progress=False).stats
    rows_per_batch = source.batch_sequences * (SEQ_LEN - source.sequences.leading_bos)
    want = measure(ArraySource([reference], rows_per_batch), sae, config, progress=False).stats
    assert got.n_tokens == want.n_tokens == reference.shape[0]
    assert got.fire_count.sum() > 0
    assert np.array_equal(got.fire_count, want.fire_count)
    np.testing.assert_allclose(got.act_sum, want.act_sum, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.act_sq_sum, want.act_sq_sum, rtol=0, atol=1e-6)


def count_calls(module, calls):
    """Count ``module``'s forward calls into ``calls`` (a list); returns the hook handle."""
    return module.register_forward_hook(lambda *_: calls.append(1))


# -- TransformerLens ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lens():
    transformer_lens = pytest.importorskip("transformer_lens")
    cfg = transformer_lens.HookedTransformerConfig(
        n_layers=3,
        d_model=32,
        n_ctx=16,
        d_head=8,
        n_heads=4,
        d_mlp=64,
        d_vocab=VOCAB,
        act_fn="gelu",
        normalization_type="LN",
        seed=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # HookedTransformer is deprecated in TransformerLens 3
        return transformer_lens.HookedTransformer(cfg).eval()


def lens_full_run(model, names):
    """TransformerLens' own full forward pass (``run_with_cache``, no early stop): each hook's
    activations [B, T, d] (dimensions after the position flattened)."""

    def run(ids, mask):
        with torch.no_grad():
            _, cache = model.run_with_cache(ids, attention_mask=mask, names_filter=list(names))
        return {name: cache[name].flatten(2) for name in names}

    return run


LENS_CASES = [
    (1, "resid", ["blocks.1.hook_resid_post"]),
    ([0, 2], "resid", ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]),
    (1, "mlp", ["blocks.1.hook_mlp_out"]),
    ([2, 0], "mlp", ["blocks.2.hook_mlp_out", "blocks.0.hook_mlp_out"]),
    (["blocks.1.attn.hook_z", "0"], "resid", ["blocks.1.attn.hook_z", "blocks.0.hook_resid_post"]),
]


@pytest.mark.parametrize("bos", [BOS, None])
@pytest.mark.parametrize(("layer", "site", "names"), LENS_CASES)
def test_lens_source_equals_full_run_with_cache(lens, layer, site, names, bos):
    seqs = sequences(bos=bos)
    source = LensSource(lens, layer, seqs, batch_tokens=3 * SEQ_LEN, site=site)
    assert source.layer_names == tuple(names)
    assert source.widths == {name: 32 for name in names}  # hook_z: 4 heads × 8 flattened
    rows = assert_batches_equal(source, lens_full_run(lens, names))
    assert rows == 70  # every real token once, and no BOS added by TransformerLens


def test_lens_source_passes_the_padding_mask(lens):
    source = LensSource(lens, [1, 2], left_padded(), batch_tokens=3 * SEQ_LEN)
    full = lens_full_run(lens, source.layer_names)
    assert assert_batches_equal(source, full) == 6 * SEQ_LEN - 8
    ids, mask = left_padded().rows(0, 3)
    unmasked = full(ids, torch.ones_like(mask))["blocks.1.hook_resid_post"][mask.bool()]
    assert not torch.equal(next(source.batches()).acts, unmasked)


def test_lens_source_stops_after_the_deepest_block(lens):
    above, final, deepest = [], [], []
    handles = [
        count_calls(lens.blocks[2], above),
        count_calls(lens.blocks[2].hook_resid_pre, above),
        count_calls(lens.ln_final, final),
        count_calls(lens.blocks[1].hook_mlp_out, deepest),
    ]
    try:
        source = LensSource(lens, [0, 1], sequences(), batch_tokens=2 * SEQ_LEN, site="mlp")
        assert source.stop_at_layer == 2
        n_batches = sum(1 for _ in source.batches())
    finally:
        for handle in handles:
            handle.remove()
    assert above == [] and final == []
    assert len(deepest) == n_batches == 4


def test_lens_source_statistics_equal_those_of_the_same_activations(lens):
    seqs = sequences(n_tokens=6 * (SEQ_LEN - 1))  # whole sequences: every batch holds as many rows
    source = LensSource(lens, 1, seqs, batch_tokens=2 * SEQ_LEN)
    ids, mask = seqs.rows()
    full = lens_full_run(lens, ["blocks.1.hook_resid_post"])
    reference = torch.cat(
        [
            full(ids[i : i + 2], mask[i : i + 2])["blocks.1.hook_resid_post"][kept(mask[i : i + 2], True)]
            for i in range(0, len(seqs), 2)
        ]
    )
    assert_same_statistics(source, reference)


def test_lens_source_rejects_bad_layers_and_tokens(lens):
    seqs = sequences()
    with pytest.raises(ValueError, match=r"no hook 'blocks\.1\.hook_nope'.*blocks\.0\.hook_resid_post"):
        LensSource(lens, "blocks.1.hook_nope", seqs, 32)
    with pytest.raises(ValueError, match=r"layer 3 does not exist.*blocks 0 … 2"):
        LensSource(lens, 3, seqs, 32)
    with pytest.raises(ValueError, match="site must be"):
        LensSource(lens, 1, seqs, 32, site="attn")
    with pytest.raises(ValueError, match="attention scores"):
        LensSource(lens, "blocks.0.attn.hook_pattern", seqs, 32)
    with pytest.raises(ValueError, match="a layer is named twice"):
        LensSource(lens, [1, "blocks.1.hook_resid_post"], seqs, 32)
    with pytest.raises(TypeError, match="not a TransformerLens model"):
        LensSource(object(), 0, seqs, 32)
    ids = torch.full((2, SEQ_LEN), VOCAB)
    wrong = LensSource(lens, 0, TokenSequences(ids, torch.ones_like(ids), "wrong ids"), 32)
    with pytest.raises(ValueError, match=r"wrong ids: token id 50 is outside the teacher's vocabulary \[0, 50\)"):
        next(wrong.batches())


def test_lens_source_reads_a_transformer_bridge(tmp_path):
    transformer_lens = pytest.importorskip("transformer_lens")
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_embd=32, n_layer=3, n_head=4, vocab_size=VOCAB, n_positions=32)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(tmp_path)  # the bridge reads its config from a local directory
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = transformer_lens.model_bridge.TransformerBridge.boot_transformers(str(tmp_path), hf_model=hf)
    source = library_source(bridge, [0, 1], sequences(), batch_tokens=3 * SEQ_LEN, site="mlp")
    assert type(source) is LensSource and source.stop_at_layer == 2
    full = lens_full_run(bridge, source.layer_names)
    above = []
    handle = count_calls(bridge.blocks[2], above)
    try:
        n_batches = sum(1 for _ in source.batches())
    finally:
        handle.remove()
    assert above == [] and n_batches == 3
    assert assert_batches_equal(source, full) == 70


# -- nnsight --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def neox():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPTNeoXConfig(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=VOCAB,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    return transformers.GPTNeoXForCausalLM(cfg).eval()


def word_tokenizer():
    """A word-level tokenizer over the VOCAB ids, built offline (``LanguageModel`` needs one)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(VOCAB)}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
        bos_token=f"t{BOS}",
        eos_token="t2",
        pad_token="t0",
    )


@pytest.fixture(scope="module", params=["NNsight", "LanguageModel"])
def envoy(request, neox):
    nnsight = pytest.importorskip("nnsight")
    if request.param == "NNsight":
        return nnsight.NNsight(neox)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LanguageModel is deprecated in nnsight 0.8 (for TransformersModel)
        return nnsight.LanguageModel(neox, tokenizer=word_tokenizer())


def nnsight_full_trace(envoy, names):
    """nnsight's own full trace (no stop): each module's output [B, T, d], read in the given order."""

    def run(ids, mask):
        saved = {}
        with torch.no_grad():
            with envoy.trace(input_ids=ids, attention_mask=mask, use_cache=False):
                for name in names:
                    saved[name] = envoy.get(name).output.save()
        return {name: out[0] if isinstance(out, tuple) else out for name, out in saved.items()}

    return run


NNSIGHT_CASES = [
    (1, "resid", ["gpt_neox.layers.1"]),
    ([0, 2], "resid", ["gpt_neox.layers.0", "gpt_neox.layers.2"]),
    (1, "mlp", ["gpt_neox.layers.1.mlp"]),
    ([2, 0], "mlp", ["gpt_neox.layers.2.mlp", "gpt_neox.layers.0.mlp"]),
    (["gpt_neox.layers.1", "gpt_neox.layers.1.mlp"], "resid", ["gpt_neox.layers.1", "gpt_neox.layers.1.mlp"]),
]


@pytest.mark.parametrize("bos", [BOS, None])
@pytest.mark.parametrize(("layer", "site", "names"), NNSIGHT_CASES)
def test_nnsight_source_equals_full_trace(envoy, neox, layer, site, names, bos):
    seqs = sequences(bos=bos)
    source = NNsightSource(envoy, layer, seqs, batch_tokens=3 * SEQ_LEN, site=site)
    assert source.layer_names == tuple(names)
    assert source.widths == {name: 32 for name in names}
    in_order = sorted(names, key=lambda n: (int(n.split(".")[2]), not n.endswith(".mlp")))  # a block's MLP ends first
    rows = assert_batches_equal(source, nnsight_full_trace(envoy, in_order))
    assert rows == 70


def test_nnsight_source_passes_the_padding_mask(envoy):
    source = NNsightSource(envoy, [1, 2], left_padded(), batch_tokens=3 * SEQ_LEN)
    full = nnsight_full_trace(envoy, source.layer_names)
    assert assert_batches_equal(source, full) == 6 * SEQ_LEN - 8
    ids, mask = left_padded().rows(0, 3)
    unmasked = full(ids, torch.ones_like(mask))["gpt_neox.layers.1"][mask.bool()]
    assert not torch.equal(next(source.batches()).acts, unmasked)


def test_nnsight_block_outputs_follow_pyfloors_layer_convention(envoy, neox):
    """Block i's output is the residual stream after block i (Hugging Face's hidden_states[i + 1])."""
    seqs = sequences()
    source = NNsightSource(envoy, [0, 1], seqs, batch_tokens=2 * SEQ_LEN)
    batch = next(source.batches())
    ids, mask = seqs.rows(0, source.batch_sequences)
    with torch.no_grad():
        hidden = neox(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    keep = kept(mask, True)
    for i, name in enumerate(source.layer_names):
        torch.testing.assert_close(batch.layers[name], hidden[i + 1][keep])


def test_nnsight_source_stops_after_the_deepest_layer(envoy, neox):
    above, deepest = [], []
    handles = [
        count_calls(neox.gpt_neox.layers[2], above),
        count_calls(neox.gpt_neox.final_layer_norm, above),
        count_calls(neox.get_output_embeddings(), above),
        count_calls(neox.gpt_neox.layers[1].mlp.dense_4h_to_h, deepest),  # the trace stops inside the MLP's own call
    ]
    try:
        source = NNsightSource(envoy, [1, 0], sequences(), batch_tokens=2 * SEQ_LEN, site="mlp")
        deepest.clear()  # making the source ran the model on two tokens (the MLPs' widths and order)
        n_batches = sum(1 for _ in source.batches())
    finally:
        for handle in handles:
            handle.remove()
    assert above == []
    assert len(deepest) == n_batches == 4


def test_nnsight_source_statistics_equal_those_of_the_same_activations(envoy):
    seqs = sequences(n_tokens=6 * (SEQ_LEN - 1))
    source = NNsightSource(envoy, 1, seqs, batch_tokens=2 * SEQ_LEN, site="mlp")
    ids, mask = seqs.rows()
    full = nnsight_full_trace(envoy, ["gpt_neox.layers.1.mlp"])
    reference = torch.cat(
        [
            full(ids[i : i + 2], mask[i : i + 2])["gpt_neox.layers.1.mlp"][kept(mask[i : i + 2], True)]
            for i in range(0, len(seqs), 2)
        ]
    )
    assert_same_statistics(source, reference)


def test_nnsight_source_rejects_bad_layers_and_tokens(envoy):
    seqs = sequences()
    with pytest.raises(ValueError, match="no layer 'gpt_neox.nope'.*gpt_neox.layers.0"):
        NNsightSource(envoy, "gpt_neox.nope", seqs, 32)
    with pytest.raises(ValueError, match="layer 3 does not exist"):
        NNsightSource(envoy, 3, seqs, 32)
    ids = torch.full((2, SEQ_LEN), VOCAB)
    wrong = NNsightSource(envoy, 0, TokenSequences(ids, torch.ones_like(ids), "wrong ids"), 32)
    with pytest.raises(ValueError, match=r"wrong ids: token id 50 is outside the teacher's vocabulary"):
        next(wrong.batches())
    with pytest.raises(TypeError, match="not an nnsight model"):
        NNsightSource(object(), 0, seqs, 32)


# -- choosing the source -------------------------------------------------------------------------
def test_library_source_picks_teacher_source_for_hugging_face_models(neox):
    source = library_source(neox, 1, sequences(), 32, site="mlp")
    assert type(source) is TeacherSource and source.layer_names == ("gpt_neox.layers.1.mlp",)
    with pytest.raises(
        TypeError,
        match="HookedTransformer or TransformerBridge, an nnsight model .* Hugging Face causal LM.*builtins.object",
    ):
        library_source(object(), 1, sequences(), 32)


def test_library_source_picks_nnsight_source(envoy):
    source = library_source(envoy, 1, sequences(), 32)
    assert type(source) is NNsightSource and source.layer_names == ("gpt_neox.layers.1",)


def test_library_source_picks_lens_source(lens):
    source = library_source(lens, [0, 1], sequences(), 32, site="mlp", dtype=torch.float64)
    assert type(source) is LensSource
    assert source.layer_names == ("blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out")
    assert next(source.batches()).acts.dtype == torch.float64
    not_hooked = type("HookedEncoderConfig", (), {"__module__": "transformer_lens.config"})()
    with pytest.raises(TypeError, match="transformer_lens.config.HookedEncoderConfig"):
        library_source(not_hooked, 0, sequences(), 32)
