"""SAE families on disk: several SAEs of one activation stream in one folder, with a manifest.

A family folder holds one pyfloor SAE file per member and ``family.json``, which lists each
member's file, its training settings and its final training metrics (and its FVU curve, for
:func:`pyfloor.features.sae_health`). ``pyfloor train-sae`` writes one when ``--latents``,
``--l1``/``--k`` or ``--seeds`` list several values; ``pyfloor measure --sae FOLDER`` measures every
member from one pass over the activations.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypedDict

import numpy as np

from ._io import CheckpointError
from .sae import SAE, TrainConfig, TrainStep

__all__ = [
    "FAMILY_MANIFEST",
    "FamilyMember",
    "member_name",
    "save_family",
    "load_family",
    "is_family",
    "Candidate",
    "select_member",
]

FAMILY_MANIFEST = "family.json"
FAMILY_FORMAT = "pyfloor.SAEFamily"
FAMILY_VERSION = 1


class FamilyMember(TypedDict):
    """One member of a family manifest: its file (relative to the folder), its training config and
    final metrics, and the FVU of every training step."""

    file: str
    config: dict[str, Any]
    steps: int
    fvu: float
    l0: float
    dead: int
    fvu_history: list[float]


def member_name(config: TrainConfig) -> str:
    """The file name of a member: activation, latents, penalty and seed, e.g. ``relu-m256-l1_0.3-s0.safetensors``."""
    penalty = f"k{config.k}" if config.activation == "topk" else f"l1_{config.l1_coeff:g}"
    return f"{config.activation}-m{config.n_latents}-{penalty}-s{config.seed}.safetensors"


def save_family(folder: str | os.PathLike[str], trained: Sequence[tuple[TrainConfig, SAE, list[TrainStep]]]) -> Path:
    """Write every member's SAE file and the manifest into ``folder`` (created); returns the manifest's path."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    members: list[FamilyMember] = []
    for config, sae, history in trained:
        name = member_name(config)
        sae.save(root / name)
        last = history[-1]
        members.append(
            {
                "file": name,
                "config": dataclasses.asdict(config),
                "steps": len(history),
                "fvu": last.fvu,
                "l0": last.l0,
                "dead": last.dead,
                "fvu_history": [step.fvu for step in history],
            }
        )
    names = [m["file"] for m in members]
    if len(set(names)) != len(names):
        raise ValueError(f"two members of the family would share a file name: {names}")
    manifest = root / FAMILY_MANIFEST
    tmp = manifest.with_name(manifest.name + ".tmp")
    tmp.write_text(json.dumps({"format": FAMILY_FORMAT, "version": FAMILY_VERSION, "members": members}, indent=1))
    tmp.replace(manifest)
    return manifest


def is_family(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a family folder (a directory with a manifest)."""
    return (Path(path) / FAMILY_MANIFEST).is_file()


def load_family(folder: str | os.PathLike[str], *, device: str | None = None) -> list[tuple[FamilyMember, SAE]]:
    """Every member of a family folder: its manifest entry and its SAE (onto ``device`` if given).

    Raises
    ------
    FileNotFoundError
        If the folder has no manifest or a member's file is missing.
    CheckpointError
        For a manifest that is not a pyfloor family manifest, from a newer pyfloor, or damaged.
    """
    root = Path(folder)
    path = root / FAMILY_MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{root}: not an SAE family folder (no {FAMILY_MANIFEST})")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FAMILY_FORMAT:
        raise CheckpointError(f"{path}: not a pyfloor SAE family manifest")
    if not isinstance(data.get("version"), int) or data["version"] > FAMILY_VERSION:
        raise CheckpointError(f"{path}: written by a newer pyfloor (version {data.get('version')!r}); upgrade pyfloor")
    members = data.get("members")
    if not isinstance(members, list) or not members or not all(isinstance(m, dict) and "file" in m for m in members):
        raise CheckpointError(f"{path}: the manifest lists no members")
    out: list[tuple[FamilyMember, SAE]] = []
    for m in members:
        file = root / str(m["file"])
        if Path(str(m["file"])).name != str(m["file"]):
            raise CheckpointError(f"{path}: member file {m['file']!r} is not a plain file name in the folder")
        if not file.is_file():
            raise FileNotFoundError(f"{file}: a member of the family is missing")
        out.append((m, SAE.load(file, device=device)))
    return out


class Candidate(NamedTuple):
    """What the selection rule sees of one family member: its penalty's sparsity rank (0 = sparsest:
    largest L1, smallest k), dictionary size, lead-estimator F̂ and FVU."""

    sparsity_rank: int
    n_latents: int
    n_features: float
    fvu: float


def select_member(
    candidates: Sequence[Candidate], *, fvu_tolerance: float = 0.5, saturation: float = 0.1
) -> tuple[int, str]:
    """The member a report leads with, by a rule that needs no truth: penalties sparsest first, the
    first whose smallest dictionary (F̂ and FVU: medians over its seeds) has an FVU of at most
    ``fvu_tolerance`` and an F̂ that the next larger dictionary reproduces within ``saturation``
    (relative), i.e. the count has stopped growing with the dictionary; failing that (or with one
    dictionary size), the sparsest penalty within the FVU tolerance, else the lowest FVU. Returns
    the index of the chosen (penalty, size)'s first member and a sentence saying which case chose it.
    """
    if not candidates:
        raise ValueError("no family members to choose from")
    cells: dict[tuple[int, int], list[int]] = {}
    for i, c in enumerate(candidates):
        cells.setdefault((c.sparsity_rank, c.n_latents), []).append(i)

    def median(idx: list[int], field: str) -> float:
        return float(np.median([getattr(candidates[i], field) for i in idx]))

    ranks = sorted({rank for rank, _ in cells})
    smallest: list[tuple[int, list[int]]] = []
    for rank in ranks:
        sizes = sorted(size for r, size in cells if r == rank)
        first = cells[(rank, sizes[0])]
        smallest.append((rank, first))
        if median(first, "fvu") > fvu_tolerance or len(sizes) < 2:
            continue
        f_small, f_next = median(first, "n_features"), median(cells[(rank, sizes[1])], "n_features")
        if abs(f_next - f_small) <= saturation * f_small:
            return first[0], (
                f"the sparsest penalty whose F̂ the next larger dictionary reproduces within {saturation:.0%} "
                f"(FVU ≤ {fvu_tolerance:g})"
            )
    within = [idx for _, idx in smallest if median(idx, "fvu") <= fvu_tolerance]
    if within:
        return within[0][0], (
            f"no penalty's F̂ stopped growing with the dictionary: the sparsest penalty with FVU ≤ {fvu_tolerance:g}"
        )
    best = min(range(len(candidates)), key=lambda i: candidates[i].fvu)
    return best, f"no penalty's F̂ stopped growing and none has FVU ≤ {fvu_tolerance:g}: the lowest FVU"
