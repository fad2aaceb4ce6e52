"""The hook an SAE was trained on, in pyfloor's convention (layer i = the output of block i), and the check
that refuses to apply it elsewhere."""

import pytest

from pyfloor.interop import EMBEDDINGS, check_hook, hook_site
from pyfloor.sae import SAE


def sae_on(hook):
    return SAE(4, 8, metadata={} if hook is None else {"hook_name": hook})


@pytest.mark.parametrize(
    "hook, site",
    [
        ("blocks.12.hook_resid_post", (12, "resid")),
        ("blocks.12.hook_resid_pre", (11, "resid")),  # the stream entering block 12 is block 11's output
        ("blocks.1.hook_resid_pre", (0, "resid")),
        ("blocks.0.hook_resid_pre", EMBEDDINGS),
        ("blocks.12.hook_mlp_out", (12, "mlp")),
        ("blocks.12.hook_resid_mid", (12, "hook_resid_mid")),
        ("blocks.3.attn.hook_z", (3, "attn.hook_z")),
        ("blocks.3.mlp.hook_post", (3, "mlp.hook_post")),
        ("hook_embed", EMBEDDINGS),
        ("layers.12", (12, "resid")),  # sparsify hookpoints
        ("layers.12.mlp", (12, "mlp")),
        ("model.layers.12", (12, "resid")),  # Hugging Face module paths
        ("gpt_neox.layers.12.mlp", (12, "mlp")),
        ("transformer.h.3", (3, "resid")),
        ("model.layers.3.self_attn", (3, "self_attn")),
        ("model.embed_tokens", EMBEDDINGS),
        ("gpt_neox.embed_in", EMBEDDINGS),
        ("lm_head", None),
        ("", None),
        (None, None),
    ],
)
def test_hook_site(hook, site):
    assert hook_site(sae_on(hook)) == site


def test_matching_or_unknown_hooks_pass():
    assert check_hook(sae_on("blocks.12.hook_resid_post"), 12, "resid") is None
    assert check_hook(sae_on("blocks.13.hook_resid_pre"), 12, "resid") is None
    assert check_hook(sae_on("gpt_neox.layers.12.mlp"), 12, "mlp") is None
    assert check_hook(sae_on(None), 3, "resid") is None
    assert check_hook(sae_on("something_else"), 3, "mlp") is None


def test_the_resid_pre_off_by_one_is_refused_with_everything_named():
    with pytest.raises(ValueError) as err:
        check_hook(sae_on("blocks.12.hook_resid_pre"), 12, "resid")
    msg = str(err.value)
    for part in (
        "'blocks.12.hook_resid_pre'",
        "the residual stream after block 11 (layer 11, site 'resid')",
        "the residual stream after block 12 (layer 12, site 'resid')",
        "--ignore-hook",
        "override=True",
    ):
        assert part in msg, (part, msg)


@pytest.mark.parametrize(
    "hook, layer, site, says",
    [
        ("blocks.12.hook_mlp_out", 12, "resid", "the output of block 12's MLP"),
        ("layers.12", 12, "mlp", "the residual stream after block 12"),
        ("layers.3", 4, "resid", "after block 3"),
        ("blocks.0.hook_resid_pre", 0, "resid", "the embeddings, before block 0"),
        ("blocks.5.hook_resid_mid", 5, "resid", "not a site pyfloor reads"),
    ],
)
def test_mismatches_are_refused(hook, layer, site, says):
    with pytest.raises(ValueError, match="--ignore-hook") as err:
        check_hook(sae_on(hook), layer, site)
    assert says in str(err.value)


def test_override_gives_a_warning_instead():
    warning = check_hook(sae_on("blocks.12.hook_resid_pre"), 12, "resid", override=True)
    assert isinstance(warning, str)
    assert "block 11" in warning and "measuring anyway" in warning


def test_bad_requests_are_named():
    with pytest.raises(ValueError, match="site"):
        check_hook(sae_on("layers.1"), 1, "attn")
    with pytest.raises(ValueError, match="layer"):
        check_hook(sae_on("layers.1"), -1, "resid")
