"""Students of a teacher's architecture at a narrower hidden width: their configs, and fresh models.

A student keeps the teacher's depth, vocabulary, positions, normalisation and rotary settings and
changes only the widths: hidden size ``width``, feed-forward size ``ffn_ratio · width`` and the
attention heads (see :func:`student_heads`). Hugging Face configs of the GPT-NeoX (Pythia),
Llama (SmolLM2 …) and GPT-2 families name these fields differently; each is set where the config has it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

from . import _checks

if TYPE_CHECKING:  # transformers is imported where a model is made
    from transformers import PretrainedConfig, PreTrainedModel

__all__ = ["HEAD_COUNTS", "MIN_HEAD_SIZE", "student_heads", "student_config", "make_students"]

#: Attention head counts a student may get, the most first
HEAD_COUNTS = (16, 8, 4, 2, 1)
#: The smallest head size (hidden size / heads) a student's attention may have
MIN_HEAD_SIZE = 16
#: Config fields of the feed-forward size (GPT-NeoX and Llama; GPT-2), of key/value heads and of the head size
_FFN_FIELDS = ("intermediate_size", "n_inner")
_KV_FIELDS = ("num_key_value_heads", "num_kv_heads")
_HEAD_DIM_FIELDS = ("head_dim",)


def student_heads(width: int) -> int:
    """The attention heads of a student of hidden size ``width``: the first of :data:`HEAD_COUNTS`
    that divides ``width`` into heads of at least :data:`MIN_HEAD_SIZE`; ValueError if none does."""
    _checks.count(width, "width", minimum=1)
    for heads in HEAD_COUNTS:
        if width % heads == 0 and width // heads >= MIN_HEAD_SIZE:
            return heads
    raise ValueError(
        f"width must be at least {MIN_HEAD_SIZE} (one attention head of size >= {MIN_HEAD_SIZE}); got {width}"
    )


def _fields(config: Any) -> set[str]:
    """The field names a Hugging Face config holds (its stored keys and the aliases of its attribute map)."""
    return set(config.to_dict()) | set(getattr(config, "attribute_map", {}))


def _first_field(config: Any, names: Iterable[str]) -> str | None:
    """The first of ``names`` that ``config`` holds (None if it holds none)."""
    held = _fields(config)
    return next((n for n in names if n in held), None)


def student_config(teacher_config: PretrainedConfig, width: int, *, ffn_ratio: int = 4) -> PretrainedConfig:
    """A copy of ``teacher_config`` (a Hugging Face ``PretrainedConfig``) for a student of hidden size
    ``width``.

    Set: the hidden size, the feed-forward size ``ffn_ratio · width`` (``intermediate_size``, or
    GPT-2's ``n_inner``), :func:`student_heads` attention heads, key/value heads (where the config
    has them) = the largest divisor of the new head count not above the teacher's, and ``head_dim``
    (where the config has it) = width / heads. Everything else is the teacher's.

    Raises
    ------
    ValueError
        For a width no head count fits, a ``ffn_ratio`` below 1, or a config without a hidden size,
        head count or feed-forward size.
    """
    heads = student_heads(width)
    _checks.count(ffn_ratio, "ffn_ratio", minimum=1)
    name = type(teacher_config).__name__
    held = _fields(teacher_config)
    ffn = _first_field(teacher_config, _FFN_FIELDS)
    missing = [f for f in ("hidden_size", "num_attention_heads") if f not in held]
    if missing:
        raise ValueError(
            f"teacher_config ({name}) has no {' or '.join(missing)}: not a decoder config pyfloor can narrow"
        )
    if ffn is None:
        raise ValueError(f"teacher_config ({name}) names no feed-forward size ({' or '.join(_FFN_FIELDS)})")
    config = copy.deepcopy(teacher_config)
    config.name_or_path = ""  # a student is no checkpoint of the hub
    config.hidden_size = width
    config.num_attention_heads = heads
    setattr(config, ffn, ffn_ratio * width)
    kv = _first_field(teacher_config, _KV_FIELDS)
    if kv is not None:
        teacher_kv = getattr(teacher_config, kv) or teacher_config.num_attention_heads
        setattr(config, kv, max(d for d in range(1, heads + 1) if heads % d == 0 and d <= teacher_kv))
    head_dim = _first_field(teacher_config, _HEAD_DIM_FIELDS)
    if head_dim is not None:
        setattr(config, head_dim, width // heads)
    return config


def make_students(
    teacher_config: PretrainedConfig,
    widths: Iterable[int],
    *,
    seed: int,
    ffn_ratio: int = 4,
    dtype: torch.dtype = torch.float32,
) -> dict[int, PreTrainedModel]:
    """Freshly initialised students (``AutoModelForCausalLM.from_config`` of :func:`student_config`),
    by width, in ``dtype``. Each is initialised from the CPU generator seeded with ``seed`` (inside a
    fork of it: the caller's random state is left alone), so a width's student is the same whatever
    other widths are made beside it.
    """
    from transformers import AutoModelForCausalLM

    _checks.count(seed, "seed")
    chosen = [_checks.count(w, "widths", minimum=1) for w in widths]
    if not chosen:
        raise ValueError("widths must hold at least one width")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"widths must not repeat; got {chosen}")
    configs = {w: student_config(teacher_config, w, ffn_ratio=ffn_ratio) for w in chosen}
    students: dict[int, PreTrainedModel] = {}
    build: Any = AutoModelForCausalLM.from_config  # typed or not, depending on the installed transformers
    for w, config in configs.items():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            students[w] = build(config, dtype=dtype)
    return students
