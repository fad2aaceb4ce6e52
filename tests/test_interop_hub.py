"""SAEs by Hugging Face hub id, read offline from a local cache laid out as huggingface_hub lays it out:
``models--org--name/blobs/<hash>`` holding the files, ``snapshots/<commit>/…`` symlinks into the blobs,
``refs/<branch or tag>`` holding a commit hash."""

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pyfloor.interop import resolve_sae
from pyfloor.sae import SAE, load_sae

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"


def saelens_files(tmp_path, m):
    """cfg.json and sae_weights.safetensors bytes of an SAELens SAE with m latents."""
    sae = SAE(4, m)
    weights = tmp_path / f"w{m}.safetensors"
    save_file({k: v.detach().contiguous() for k, v in sae.state_dict().items()}, str(weights))
    cfg = {"architecture": "standard", "d_in": 4, "d_sae": m, "metadata": {"hook_name": "blocks.1.hook_resid_post"}}
    return {"cfg.json": json.dumps(cfg).encode(), "sae_weights.safetensors": weights.read_bytes()}


def add_snapshot(cache, repo_id, commit, files, refs=()):
    """Write ``files`` ({path in the repo: bytes}) as one cached snapshot of ``repo_id``."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for path, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)  # huggingface_hub writes the hash without a newline


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # so that no relative path named like the hub id exists
    cache = tmp_path / "hub"
    add_snapshot(
        cache,
        "org/saes",
        COMMIT,
        {f"layer_1/width_{m}/{n}": b for m in (8, 16) for n, b in saelens_files(tmp_path, m).items()},
        ["main"],
    )
    add_snapshot(
        cache, "org/saes", OTHER, {f"layer_1/width_8/{n}": b for n, b in saelens_files(tmp_path, 12).items()}, ["v0"]
    )
    return cache


@pytest.fixture(params=["huggingface_hub", "layout"])
def client(request, monkeypatch):
    """Resolve through huggingface_hub, and again with it unimportable (the cache layout read directly)."""
    if request.param == "huggingface_hub":
        pytest.importorskip("huggingface_hub")
    else:
        monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    return request.param


def test_hub_id_with_a_subfolder(cache, client):
    path = resolve_sae("org/saes/layer_1/width_16", cache_dir=cache)
    assert path == cache / "models--org--saes" / "snapshots" / COMMIT / "layer_1" / "width_16"
    sae = load_sae("org/saes/layer_1/width_16", cache_dir=cache)
    assert sae.n_latents == 16
    assert {k: sae.metadata[k] for k in ("hub_id", "hub_subfolder", "revision", "hook_name")} == {
        "hub_id": "org/saes",
        "hub_subfolder": "layer_1/width_16",
        "revision": COMMIT,
        "hook_name": "blocks.1.hook_resid_post",
    }


@pytest.mark.parametrize(
    "spec, revision",
    [
        ("org/saes/layer_1/width_8@v0", None),
        ("org/saes/layer_1/width_8", "v0"),
        (f"org/saes/layer_1/width_8@{OTHER}", None),
    ],
)
def test_revisions_by_tag_or_commit(cache, client, spec, revision):
    sae = load_sae(spec, cache_dir=cache, revision=revision)
    assert sae.n_latents == 12 and sae.metadata["revision"] == OTHER


def test_the_cache_from_the_environment(cache, client, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert load_sae("org/saes/layer_1/width_8").n_latents == 8
    monkeypatch.delenv("HF_HUB_CACHE")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "hub").symlink_to(cache)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert load_sae("org/saes/layer_1/width_16").n_latents == 16


@pytest.mark.parametrize(
    "spec, revision",
    [
        ("org/absent", None),
        ("org/saes/layer_1/width_8@v9", None),
        ("org/saes/layer_2/width_8", None),
        ("org/saes", "nope"),
    ],
)
def test_what_is_not_cached_says_how_to_download_it(cache, client, spec, revision):
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache") as err:
        load_sae(spec, cache_dir=cache, revision=revision)
    assert "huggingface-cli download org/" in str(err.value)


def test_a_local_path_wins_and_takes_no_revision(tmp_path, client, monkeypatch):
    sae = SAE(4, 8)
    sae.save(tmp_path / "org" / "name")  # a file whose relative path reads like a hub id
    monkeypatch.chdir(tmp_path)
    assert resolve_sae("org/name") == Path("org/name")
    assert torch.equal(load_sae("org/name").W_enc, sae.W_enc)
    with pytest.raises(ValueError, match="local path"):
        resolve_sae("org/name", revision="main")


@pytest.mark.parametrize("spec", ["/no/such/sae.safetensors", "./missing", "single", "org/name/../x"])
def test_what_is_neither_a_path_nor_a_hub_id(tmp_path, spec, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such SAE file or directory"):
        resolve_sae(spec, cache_dir=tmp_path)


def test_revisions_that_disagree_or_are_empty(tmp_path):
    with pytest.raises(ValueError, match="disagree"):
        resolve_sae("org/name@v1", revision="v2", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="empty revision"):
        resolve_sae("org/name@", cache_dir=tmp_path)
