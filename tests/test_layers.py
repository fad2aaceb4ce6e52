"""Several layers in one teacher pass, sharded and truncated teachers (pyfloor.sources, pyfloor.measure)."""

import json

import numpy as np
import pytest
import torch
from test_measure import sparse_sae, token_sequences

from pyfloor.measure import MeasureConfig, measure, measure_family, measure_layers
from pyfloor.sae import SAE, sae_sha256
from pyfloor.sources import TeacherSource, load_teacher
from pyfloor.stats import FeatureStats

CONFIG = MeasureConfig(bootstrap=4, histograms=True)


def fitted_sae(source, layer, m=48, seed=0):
    """A ReLU SAE whose latents each fire on about a tenth of the first batch's tokens at ``layer``."""
    x = next(source.batches()).layers[layer]
    sae = sparse_sae(x.shape[1], m, seed=seed, bias=0.0, scale=1.0 / float(x.std()))
    with torch.no_grad():
        sae.b_enc.copy_(-torch.quantile(sae.pre_activations(x), 0.9, dim=0))
    return sae


def same_result(a, b):
    """Two measurements agree bit for bit, timings apart."""
    for field in ("n_tokens", "fire_count", "margin_count"):
        assert np.array_equal(getattr(a.stats, field), getattr(b.stats, field)), field
    for field in ("act_sum", "act_sq_sum", "act_max"):
        assert np.array_equal(getattr(a.stats, field), getattr(b.stats, field)), field
    da, db = a.to_dict(), b.to_dict()
    for d in (da, db):
        d.pop("seconds"), d.pop("tokens_per_second")
    assert da == db


def test_three_layers_in_one_pass_equal_three_passes(tiny_neox):
    layers = [0, 1, 2]
    multi = TeacherSource(tiny_neox, layers, token_sequences(), batch_tokens=64)
    assert multi.layer_names == ("gpt_neox.layers.0", "gpt_neox.layers.1", "gpt_neox.layers.2")
    saes = {name: fitted_sae(multi, name, seed=i) for i, name in enumerate(multi.layer_names)}
    calls = []
    handle = tiny_neox.gpt_neox.layers[3].register_forward_hook(lambda *a: calls.append(3))
    forwards = []
    top = tiny_neox.gpt_neox.layers[0].register_forward_hook(lambda *a: forwards.append(1))
    try:
        together = measure_layers(multi, saes, CONFIG, progress=False)
    finally:
        handle.remove(), top.remove()
    assert calls == []  # block 3, above the deepest layer read, never ran
    assert len(forwards) == 3  # one forward per batch for all three layers
    for i, name in enumerate(multi.layer_names):
        alone = measure(
            TeacherSource(tiny_neox, i, token_sequences(), batch_tokens=64), saes[name], CONFIG, progress=False
        )
        same_result(together[name][0], alone)


def test_layers_name_their_saes(tiny_neox):
    src = TeacherSource(tiny_neox, [1, 2], token_sequences(), batch_tokens=64)
    with pytest.raises(ValueError, match="no SAE can read gpt_neox.layers.3"):
        measure_layers(src, {"gpt_neox.layers.3": sparse_sae(32, 8)}, CONFIG, progress=False)
    with pytest.raises(ValueError, match="a layer is named twice"):
        TeacherSource(tiny_neox, [1, "gpt_neox.layers.1"], token_sequences(), batch_tokens=64)
    with pytest.raises(ValueError, match="width 32 at gpt_neox.layers.2 but the SAE expects d_in = 16"):
        measure_family(src, [sparse_sae(16, 8)], CONFIG, progress=False, layers=["gpt_neox.layers.2"])


def test_a_layer_and_its_mlp_in_one_pass(tiny_neox):
    src = TeacherSource(tiny_neox, [2, 1], token_sequences(), batch_tokens=64, site="mlp")
    assert src.layer_names == ("gpt_neox.layers.2.mlp", "gpt_neox.layers.1.mlp")
    batch = next(src.batches())
    assert set(batch.layers) == set(src.layer_names) and batch.acts is batch.layers["gpt_neox.layers.2.mlp"]
    alone = next(TeacherSource(tiny_neox, 1, token_sequences(), batch_tokens=64, site="mlp").batches())
    assert torch.equal(batch.layers["gpt_neox.layers.1.mlp"], alone.acts)


def stats_of(model, layer=1, **kw):
    src = TeacherSource(model, layer, token_sequences(), batch_tokens=64, **kw)
    return measure(
        src, sparse_sae(32, 48, bias=-0.8, scale=40.0), MeasureConfig(bootstrap=0, histograms=False), progress=False
    ).stats


def test_a_teacher_sharded_over_cpu_and_disk_gives_the_same_statistics(saved_teacher, tiny_neox, tmp_path):
    device_map = {
        "gpt_neox.embed_in": "cpu",
        "gpt_neox.rotary_emb": "cpu",
        "gpt_neox.layers.0": "cpu",
        "gpt_neox.layers.1": "disk",
        "gpt_neox.layers.2": "disk",
        "gpt_neox.layers.3": "disk",
        "gpt_neox.final_layer_norm": "disk",
        "lm_head": "disk",
    }
    sharded, _ = load_teacher(saved_teacher, device_map=device_map, offload_folder=tmp_path / "offload")
    assert set(sharded.hf_device_map.values()) == {"cpu", "disk"}
    plain, _ = load_teacher(saved_teacher)
    a, b = stats_of(sharded), stats_of(plain)
    assert np.array_equal(a.fire_count, b.fire_count) and np.array_equal(a.act_sq_sum, b.act_sq_sum)
    auto, _ = load_teacher(saved_teacher, device_map="auto")
    c = stats_of(auto)
    assert np.array_equal(c.fire_count, b.fire_count) and np.array_equal(c.act_sq_sum, b.act_sq_sum)
    with pytest.raises(ValueError, match="device_map .* or device, not both"):
        load_teacher(saved_teacher, device_map="auto", device="cpu")


def test_a_truncated_teacher_loads_only_the_blocks_it_needs(saved_teacher, tiny_neox):
    short, _ = load_teacher(saved_teacher, keep_layers=2)
    assert len(short.gpt_neox.layers) == 2
    whole = stats_of(tiny_neox)
    part = stats_of(short)
    assert np.array_equal(part.fire_count, whole.fire_count) and np.array_equal(part.act_sq_sum, whole.act_sq_sum)
    with pytest.raises(ValueError, match=r"keep_layers=9 \(layers up to 8\), but the teacher has blocks 0 … 3"):
        load_teacher(saved_teacher, keep_layers=9)


def test_measure_command_reads_several_layers_of_a_sharded_teacher(saved_teacher, tiny_neox, tmp_path, capsys):
    from pyfloor.cli import main

    tokens = tmp_path / "tokens.npy"
    np.save(tokens, np.random.default_rng(0).integers(1, 97, size=2000).astype(np.int64))
    probe = TeacherSource(tiny_neox, [0, 2], token_sequences(), batch_tokens=64)
    for i, name in enumerate(probe.layer_names):
        fitted_sae(probe, name, seed=i).save(tmp_path / f"sae{i}.safetensors")
    common = ["--model", str(saved_teacher), "--tokens", str(tokens), "--seq-len", "32", "--batch-tokens", "256"]
    common += ["--bootstrap", "4", "--quiet", "--json"]
    device_map = '{"gpt_neox.embed_in": "cpu", "gpt_neox.rotary_emb": "cpu", "gpt_neox.layers.0": "cpu", "gpt_neox.layers.1": "disk", "gpt_neox.layers.2": "disk", "gpt_neox.final_layer_norm": "disk", "lm_head": "disk"}'
    both = ["--layer", "0,2", "--sae", str(tmp_path / "sae0.safetensors"), str(tmp_path / "sae1.safetensors")]
    sharded = ["--device-map", device_map, "--offload-folder", str(tmp_path / "offload")]
    assert main(["measure", *common, *both, *sharded, "--out", str(tmp_path / "both")]) == 0
    layers = json.loads(capsys.readouterr().out)["layers"]
    assert [r["layer"] for r in layers] == ["gpt_neox.layers.0", "gpt_neox.layers.2"]
    sae = ["--sae", str(tmp_path / "sae1.safetensors")]
    assert main(["measure", *common, "--layer", "2", *sae, "--out", str(tmp_path / "one")]) == 0
    alone = json.loads(capsys.readouterr().out)
    together = json.loads((tmp_path / "both" / "layer-2" / "report.json").read_text())
    assert together["measurement"] == alone["measurement"] and together["intervals"] == alone["intervals"]
    assert (tmp_path / "both" / "layers.png").is_file() and (tmp_path / "both" / "layers.md").is_file()
    prov = together["provenance"]
    assert prov["source"]["teacher"]["name"] == str(saved_teacher.resolve())
    assert prov["source"]["teacher"]["blocks_loaded"] == 3  # the block above layer 2 was never loaded
    assert set(prov["source"]["teacher"]["device_map"].values()) == {"cpu", "disk"}
    assert prov["source"]["layer"] == "gpt_neox.layers.2" and prov["source"]["tokens"]["seq_len"] == 32
    assert prov["sae"]["sha256"] == sae_sha256(SAE.load(tmp_path / "sae1.safetensors"))
    assert prov["stream"]["n_tokens"] == together["n_tokens"] and prov["versions"]["torch"] == torch.__version__
    _, meta = FeatureStats.load_with_metadata(tmp_path / "both" / "layer-2" / "stats.safetensors")
    assert json.loads(meta["provenance"]) == prov
    assert "## Provenance" in (tmp_path / "both" / "layer-2" / "report.md").read_text()
    assert main(["measure", *common, *both[:2], *sae, "--out", str(tmp_path / "bad")]) == 2
    assert "give one --sae per layer" in capsys.readouterr().err


def test_measure_command_streams_a_dataset_and_checks_the_sae_hook(saved_teacher, tiny_neox, tmp_path, capsys):
    pytest.importorskip("datasets")
    from pyfloor.cli import main

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = np.random.default_rng(0)
    vocab = [chr(97 + i % 26) + str(i // 26) for i in range(1, 97)]
    rows = [{"text": " ".join(rng.choice(vocab, rng.integers(5, 40)))} for _ in range(60)]
    (corpus / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    probe = TeacherSource(tiny_neox, 1, token_sequences(), batch_tokens=64)
    sae = fitted_sae(probe, "gpt_neox.layers.1")
    sae.metadata["hook_name"] = "blocks.2.hook_resid_pre"  # SAELens: the stream after block 1
    sae.save(tmp_path / "sae.safetensors")
    common = ["measure", "--model", str(saved_teacher), "--dataset", str(corpus), "--split", "train"]
    common += ["--seq-len", "16", "--batch-tokens", "64", "--sae", str(tmp_path / "sae.safetensors")]
    common += ["--bootstrap", "4", "--quiet", "--json", "--no-histograms"]
    assert main([*common, "--layer", "1", "--out", str(tmp_path / "m")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["provenance"]["source"]["tokens"]["streamed"] and report["n_tokens"] > 0
    assert main([*common, "--layer", "2", "--out", str(tmp_path / "wrong")]) == 1
    err = capsys.readouterr().err
    assert "'blocks.2.hook_resid_pre'" in err and "--ignore-hook" in err and not (tmp_path / "wrong").exists()
    assert main([*common, "--layer", "2", "--ignore-hook", "--out", str(tmp_path / "anyway")]) == 0
    assert "warning: sae: the SAE was trained on 'blocks.2.hook_resid_pre'" in capsys.readouterr().err
