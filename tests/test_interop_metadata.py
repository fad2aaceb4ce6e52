"""Provenance carried by SAEs: metadata in pyfloor SAE files, what the loaders and trainer record, the
weights' digest, and as_sae's handling of what is not an SAE."""

import hashlib
import json

import pytest
import torch
from safetensors.torch import save_file

from pyfloor._io import CheckpointError
from pyfloor.interop import as_sae, from_saelens
from pyfloor.sae import SAE, TrainConfig, load_sae, sae_sha256, train_sae, train_sae_family


def test_metadata_survives_save_and_load(tmp_path):
    meta = {"source": "x", "hook_name": "blocks.3.hook_resid_post", "hook_layer": 3, "training": {"lr": 1e-3}}
    sae = SAE(4, 8, "topk", k=2, metadata=meta)
    sae.save(tmp_path / "sae.safetensors")
    back = SAE.load(tmp_path / "sae.safetensors")
    assert back.metadata == meta and back.metadata is not meta
    loaded = load_sae(tmp_path / "sae.safetensors")
    assert loaded.metadata == {**meta, "path": str((tmp_path / "sae.safetensors").resolve())}
    loaded.save(tmp_path / "copy.safetensors")  # the path it was read from is not the new file's
    assert SAE.load(tmp_path / "copy.safetensors").metadata == meta


def test_a_file_from_before_metadata_loads_with_none(tmp_path):
    sae = SAE(4, 8)
    save_file(
        {k: v.detach().contiguous() for k, v in sae.state_dict().items()},
        str(tmp_path / "old.safetensors"),
        metadata={"format": "pyfloor.SAE", "version": "1", "config": json.dumps(sae.config())},
    )
    back = SAE.load(tmp_path / "old.safetensors")
    assert back.metadata == {} and torch.equal(back.W_enc, sae.W_enc)


@pytest.mark.parametrize("bad", [{"x": float("nan")}, {"x": object()}, {"x": float("inf")}])
def test_metadata_that_json_cannot_hold_is_refused_on_save(tmp_path, bad):
    with pytest.raises(ValueError, match="metadata is not JSON-serialisable"):
        SAE(4, 8, metadata=bad).save(tmp_path / "sae.safetensors")
    assert not (tmp_path / "sae.safetensors").exists()


@pytest.mark.parametrize("text", ["[1]", "{", '{"x": NaN}', '{"x": 1e999}'])
def test_corrupt_metadata_in_a_file_is_a_checkpoint_error(tmp_path, text):
    sae = SAE(4, 8)
    save_file(
        {k: v.detach().contiguous() for k, v in sae.state_dict().items()},
        str(tmp_path / "sae.safetensors"),
        metadata={"format": "pyfloor.SAE", "version": "1", "config": json.dumps(sae.config()), "metadata": text},
    )
    with pytest.raises(CheckpointError, match="metadata"):
        SAE.load(tmp_path / "sae.safetensors")


def test_training_records_its_config():
    x = torch.randn(256, 6, generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(n_latents=12, steps=2, seed=3)
    sae, _ = train_sae([x], 6, cfg)
    assert sae.metadata["training"] == {**vars(cfg)}
    family = train_sae_family([x], 6, [cfg, TrainConfig(n_latents=8, activation="topk", k=2, steps=1)])
    assert [s.metadata["training"]["n_latents"] for s, _ in family] == [12, 8]
    assert family[1][0].metadata["training"]["k"] == 2


def test_sae_sha256_hashes_names_and_bytes_in_name_order():
    sae = SAE(4, 8, "jumprelu", metadata={"a": 1})
    h = hashlib.sha256()
    for name in ["W_dec", "W_enc", "b_dec", "b_enc", "threshold"]:
        h.update(name.encode())
        h.update(getattr(sae, name).detach().numpy().tobytes())
    assert sae_sha256(sae) == h.hexdigest()
    other = SAE(4, 8, "jumprelu")
    other.load_state_dict(sae.state_dict())
    assert sae_sha256(other) == sae_sha256(sae)  # metadata does not enter it
    with torch.no_grad():
        other.b_enc[3] += 1e-3
    assert sae_sha256(other) != sae_sha256(sae)


def test_as_sae_returns_a_pyfloor_sae_itself_and_names_what_it_takes():
    sae = SAE(4, 8)
    assert as_sae(sae) is sae
    for bad in (sae.state_dict(), "sae.safetensors", torch.nn.Linear(4, 8)):
        with pytest.raises(TypeError, match="expected a pyfloor SAE, a sae_lens SAE .* or a sparsify SparseCoder"):
            as_sae(bad)


def saelens_state(d=4, m=8):
    sae = SAE(d, m)
    return {k: v.detach().clone() for k, v in sae.state_dict().items()}


def test_saelens_state_dict_provenance_from_a_6x_config():
    cfg = {
        "architecture": "jumprelu",
        "d_in": 4,
        "d_sae": 8,
        "metadata": {
            "hook_name": "blocks.2.hook_resid_post",
            "model_name": "gpt2",
            "context_size": 128,
            "training_architecture": "jumprelu",
            "training_architecture_details": {"l0_coefficient": 3.0},
        },
    }
    sae = from_saelens({**saelens_state(), "threshold": torch.full((8,), 0.1)}, cfg)
    meta = sae.metadata
    assert (meta["library"], meta["source"], meta["architecture"]) == ("saelens", "saelens", "jumprelu")
    assert (meta["hook_name"], meta["model_name"]) == ("blocks.2.hook_resid_post", "gpt2")
    assert meta["training"] == {
        "training_architecture": "jumprelu",
        "training_architecture_details": {"l0_coefficient": 3.0},
        "context_size": 128,
    }
    assert "hook_layer" not in meta and meta["config"] == cfg


def test_a_saelens_config_older_than_6(tmp_path):
    t = saelens_state()
    save_file({k: v.contiguous() for k, v in t.items()}, str(tmp_path / "sae_weights.safetensors"))
    cfg = {
        "architecture": "standard",
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 3},
        "hook_point": "blocks.6.hook_resid_pre",
        "hook_layer": 6,
        "model_name": "pythia-70m-deduped",
        "normalize_activations": False,
        "lr": 4e-4,
        "l1_coefficient": 5.0,
        "training_tokens": 10_000,
        "seqpos_slice": (None,),
    }
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    sae = load_sae(tmp_path)
    assert (sae.activation, sae.k) == ("topk", 3)
    meta = sae.metadata
    assert (meta["source"], meta["hook_name"], meta["hook_layer"]) == (str(tmp_path), "blocks.6.hook_resid_pre", 6)
    assert meta["training"] == {"lr": 4e-4, "l1_coefficient": 5.0, "training_tokens": 10_000}
    x = torch.randn(10, 4)
    pre = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    val, idx = pre.topk(3, dim=-1)
    torch.testing.assert_close(sae.encode(x), torch.zeros_like(pre).scatter(-1, idx, val.relu()))


@pytest.mark.parametrize(
    "change, match",
    [
        ({"activation_fn_str": "tanh-relu"}, "activation_fn 'tanh-relu' is not supported"),
        ({"finetuning_scaling_factor": True}, "finetuning_scaling_factor"),
        ({"normalize_activations": True}, "normalize_activations=True"),
        ({"architecture": "topk", "activation_fn_kwargs": {"k": 2.5}}, "activation_fn_kwargs.k must be an integer"),
    ],
)
def test_saelens_options_pyfloor_does_not_read_are_named(change, match):
    with pytest.raises(ValueError, match=match):
        from_saelens(saelens_state(), {"architecture": "standard", **change})


def test_a_sparsify_run_directory_gives_hookpoint_model_and_training(tmp_path):
    t = saelens_state()
    run = tmp_path / "run"
    (run / "gpt_neox.layers.3").mkdir(parents=True)
    (run / "custom").mkdir()
    sp = {
        "encoder.weight": t["W_enc"].T.contiguous(),
        "encoder.bias": t["b_enc"],
        "W_dec": t["W_dec"],
        "b_dec": t["b_dec"],
    }
    for sub in ("gpt_neox.layers.3", "custom"):
        save_file(sp, str(run / sub / "sae.safetensors"))
        (run / sub / "cfg.json").write_text(json.dumps({"activation": "topk", "k": 2, "d_in": 4, "num_latents": 8}))
    train = {
        "sae": {"k": 2},
        "model": "EleutherAI/pythia-70m",
        "hookpoints": ["gpt_neox.layers.3", "custom"],
        "lr": 1e-3,
        "hf_token": None,
    }
    (run / "config.json").write_text(json.dumps(train))
    sae = load_sae(run / "gpt_neox.layers.3")
    assert sae.metadata["hook_name"] == "gpt_neox.layers.3" and sae.metadata["model_name"] == "EleutherAI/pythia-70m"
    assert sae.metadata["training"]["lr"] == 1e-3 and "hf_token" not in sae.metadata["training"]
    assert load_sae(run / "custom").metadata["hook_name"] == "custom"  # listed among the run's hookpoints
    (run / "config.json").unlink()
    assert "hook_name" not in load_sae(run / "custom").metadata  # a plain name, nothing says it is a hookpoint
