"""A training recipe: everything that defines one arm of an experiment, loaded from TOML.

A config file may `extends = "other.toml"` (relative path) and override any key; nested tables
(`[augment]`) are merged key by key. See `configs/` for the shipped recipes and ablation arms.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from .data import AugmentConfig


@dataclasses.dataclass
class Recipe:
    name: str = "baseline"
    arch: str = "tc-resnet8"
    seed: int = 1
    steps: int = 6000
    batch: int = 100
    lr: float = 0.1
    lr_boundaries: tuple[float, float] = (0.5, 0.8)  # fractions of `steps` where lr drops 10x
    momentum: float = 0.9
    weight_decay: float = 1e-3  # not applied to BatchNorm and biases
    dropout: float = 0.5
    label_smoothing: float = 0.0
    cmn: bool = False  # cepstral mean normalization over the window, inside the model
    # Data: engines trained on, and families held out for testing (never trained on).
    engines: list[str] = dataclasses.field(default_factory=lambda: [
        "espeak", "flite-kal16", "flite-awb", "flite-rms", "festival-kal", "freetts-kevin16"])
    holdout_families: list[str] = dataclasses.field(default_factory=lambda: ["awb"])
    # "engine:voice" pairs held out as well (research: an out-of-family test inside one engine, e.g.
    # "gnuspeech:baby"); their clips and negative-speech tracks are never trained on. Default: none.
    holdout_voices: list[str] = dataclasses.field(default_factory=list)
    val_espeak_accents: list[str] = dataclasses.field(default_factory=lambda: ["en-029", "en-gb-scotland"])
    espeak_max_share: float = 1.0  # cap on espeak's share of the keyword/unknown training clips
    unknown_share: float = 1.0  # unknown windows per batch relative to one keyword class
    silence_share: float = 1.0
    unknown_keyword_like: bool = True  # keep unknown words that share a keyword's onset/rhyme
    partial_keyword_p: float = 0.0  # share of unknown windows that are a cut-off keyword
    # Continuous speech: keywords between other words of the same voice, and `_unknown_` windows cut
    # from runs of several words (what a 1-s window of a sentence looks like).
    context_p: float = 0.0  # share of keyword windows with neighbouring words on both sides
    unknown_run_p: float = 0.0  # share of unknown windows cut from a run of 3-6 words
    context_gap_ms: tuple[float, float] = (20.0, 250.0)  # pause between words
    # Negatives (detection-quality issue). All off by default: recipes without these keys draw the
    # same random numbers and build the same batches as before.
    negative_share: float = 0.0  # share of each batch: `_unknown_` windows cut at random offsets from
    #                              the continuous negative-speech tracks (data/negspeech, negspeech.py)
    negative_engines: list[str] | None = None  # engines whose tracks are used (None: `engines`)
    negative_weight: float = 1.0  # loss weight of `_unknown_` and `_silence_` windows (keywords: 1)
    hard_threshold: float = 0.0  # > 0: hard-example filtering, loss only on negatives whose highest
    #                              keyword probability is >= this and keywords whose own probability is < this
    hard_start: float = 0.0  # fraction of `steps` before hard-example filtering starts
    mined_file: str | None = None  # mining round output (mine.py), relative to the data dir
    mined_share: float = 0.0  # share of each batch: `_unknown_` windows at the mined offsets (±shift)
    # Voice conversion (voiceconv.py): converted copies of these engines' clips join the training
    # clips (same filters: held-out families, validation accents). Default: none.
    vc_engines: list[str] = dataclasses.field(default_factory=list)
    # Feature-space augmentation.
    specaug_p: float = 0.0
    specaug_time_masks: int = 2
    specaug_time_width: int = 10  # frames
    specaug_freq_masks: int = 2
    specaug_freq_width: int = 8  # mel bins
    mixup_p: float = 0.0
    mixup_alpha: float = 0.2
    # Distillation (distill.py): a keyword clip's target becomes (1 - weight) x its one-hot label +
    # weight x the teacher's probabilities (flattened by `distill_temperature`). Default: off.
    distill_file: str | None = None  # teacher probabilities per clip uid, relative to the data dir
    distill_weight: float = 0.0
    distill_temperature: float = 1.0
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _raw(path: Path) -> dict:
    d = tomllib.loads(path.read_text(encoding="utf-8"))
    parent = d.pop("extends", None)
    return _merge(_raw(path.parent / parent), d) if parent else d


def load_recipe(path: Path, **overrides) -> Recipe:
    d = _merge(_raw(path), {k: v for k, v in overrides.items() if v is not None})
    fields = {f.name for f in dataclasses.fields(Recipe)}
    unknown = set(d) - fields
    if unknown:
        raise ValueError(f"{path}: unknown recipe keys {sorted(unknown)}")
    aug = d.pop("augment", {})
    afields = {f.name for f in dataclasses.fields(AugmentConfig)}
    if set(aug) - afields:
        raise ValueError(f"{path}: unknown [augment] keys {sorted(set(aug) - afields)}")
    aug = {k: tuple(v) if isinstance(v, list) else v for k, v in aug.items()}
    d = {k: tuple(v) if k == "lr_boundaries" else v for k, v in d.items()}
    return Recipe(augment=AugmentConfig(**aug), **d)


def recipe_dict(r: Recipe) -> dict:
    return dataclasses.asdict(r)


def held_out(m: dict, r: Recipe) -> bool:
    """A clip or track (its metadata) of a held-out family or a held-out `engine:voice` of recipe `r`."""
    return m["family"] in r.holdout_families or f"{m['engine']}:{m.get('voice')}" in r.holdout_voices
