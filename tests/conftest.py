"""Shared test set-up.

Triton reads TRITON_INTERPRET when a kernel is defined, i.e. when ``pyfloor.kernels`` is imported,
so it is set here before anything imports it: kernels then run on CPU tensors in the interpreter.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
#: Real measurements shared with the project; they live beside the checkout, never in it.
FIXTURES = Path(os.environ.get("PYFLOOR_FIXTURES", REPO.parent / "shared" / "fixtures"))
PAPER_FIXTURE = FIXTURES / "pythia-410m-layer12-sae-measurements.json"


@pytest.fixture(scope="session")
def paper_fixture_path() -> Path:
    """The paper's published Pythia-410M layer-12 measurement."""
    if not PAPER_FIXTURE.is_file():
        pytest.fail(
            f"fixture {PAPER_FIXTURE} not found: the tests expect ../shared/fixtures beside the checkout "
            "(or PYFLOOR_FIXTURES pointing at it)"
        )
    return PAPER_FIXTURE


@pytest.fixture(scope="module")
def tiny_neox():
    """A randomly initialised GPT-NeoX (the Pythia architecture): 4 blocks of width 32, vocabulary 97."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPTNeoXConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=97,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    return transformers.GPTNeoXForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def saved_teacher(tmp_path_factory, tiny_neox):
    """The tiny teacher saved as a Hugging Face model directory, with a tokenizer that loads offline."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    tokenizers = pytest.importorskip("tokenizers")
    path = tmp_path_factory.mktemp("teacher")
    tiny_neox.save_pretrained(path)
    vocab = {chr(97 + i % 26) + str(i // 26): i for i in range(97)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="a0"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="a0").save_pretrained(path)
    return path
