"""Train one recipe: split by engine family and voice, augment on the fly, evaluate on held-out voices.

Usage: python -m kws_train.train --config configs/tc-resnet8.toml --data data --out runs/NAME
Writes runs/NAME/{model.pt, recipe.json, metrics.json, train.log}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import CLASSES, KEYWORDS, SILENCE, UNKNOWN
from .data import (LABEL_INDEX, Clips, Tracks, espeak_accent, load_background, load_clips, load_mined,
                   load_negspeech, make_window, mined_crop, negative_crop)
from .distill import load_teacher, soft_targets
from .evaluate import evaluate_sets, eval_sets_for
from .frontend import TorchFrontend
from .model import TCResNet, count_flops, count_params
from .recipe import Recipe, held_out, load_recipe, recipe_dict
from .synth import is_keyword_like


def trainable(m: dict, r: Recipe) -> bool:
    """A clip of a recipe engine, not of a held-out family or validation accent (nor, without
    `unknown_keyword_like`, a keyword-like unknown word)."""
    return (m["engine"] in r.engines and not held_out(m, r)
            and espeak_accent(m) not in r.val_espeak_accents
            and (r.unknown_keyword_like or m["label"] != UNKNOWN or not is_keyword_like(m["word"])))


def split_train(clips: Clips, r: Recipe, rng: np.random.Generator) -> Clips:
    """Training clips: recipe engines, minus held-out families and validation accents, espeak capped."""
    train = clips.select(lambda m: trainable(m, r))
    is_espeak = np.array([m["engine"] == "espeak" for m in train.meta])
    n_other = int((~is_espeak).sum())
    if r.espeak_max_share < 1.0 and n_other > 0:
        max_espeak = int(r.espeak_max_share / (1 - r.espeak_max_share) * n_other)
        esp = np.nonzero(is_espeak)[0]
        if len(esp) > max_espeak:
            drop = set(rng.choice(esp, len(esp) - max_espeak, replace=False).tolist())
            keep = [i for i in range(len(train)) if i not in drop]
            train = Clips([train.audio[i] for i in keep], [train.meta[i] for i in keep])
    return train


class BatchSampler:
    """Class-balanced batches of augmented 1-s windows (keywords weight 1, unknown/silence per recipe),
    plus, with `negative_share`, that share of each batch cut from negative-speech tracks (`_unknown_`).

    Without `negatives` (export's int8 calibration windows) the whole batch is class-balanced."""

    def __init__(self, train: Clips, bg, r: Recipe, rng: np.random.Generator, negatives: Tracks | None = None,
                 mined: list[tuple[int, int]] | None = None, teacher: dict[int, np.ndarray] | None = None):
        self.train, self.bg, self.r, self.rng = train, bg, r, rng
        self.teacher = teacher or {}  # training-clip index -> soft target (distillation)
        self.negatives = negatives if negatives is not None and len(negatives) else None
        self.mined = mined if mined and self.negatives is not None else None
        labels = train.labels()
        self.by_class = {c: np.nonzero(labels == LABEL_INDEX[c])[0] for c in KEYWORDS + [UNKNOWN]}
        self.unknown_by_engine: dict[str, np.ndarray] = {}
        for j in self.by_class[UNKNOWN]:
            self.unknown_by_engine.setdefault(train.meta[j]["engine"], []).append(j)
        self.unknown_by_engine = {e: np.array(v) for e, v in self.unknown_by_engine.items()}
        w = np.array([1.0] * len(KEYWORDS) + [r.silence_share, r.unknown_share])
        self.classes = KEYWORDS + [SILENCE, UNKNOWN]
        self.p = w / w.sum()

    def __call__(self) -> tuple[np.ndarray, np.ndarray]:
        x, y, _ = self.sample()
        return x, y

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A batch: windows, labels and training targets [batch, 12] (one-hot, or for a keyword clip
        with a teacher entry the distillation mix of the two)."""
        n_neg = int(round(self.r.batch * self.r.negative_share)) if self.negatives is not None else 0
        n_mined = int(round(self.r.batch * self.r.mined_share)) if self.mined is not None else 0
        cls = self.rng.choice(len(self.classes), size=self.r.batch - n_neg - n_mined, p=self.p)
        xs, ys, soft = [], [], {}
        for c in cls:
            name = self.classes[c]
            context, run_crop = None, False
            if name == SILENCE:
                clip = None
            elif name == UNKNOWN and self.rng.random() < self.r.partial_keyword_p:
                clip = self.partial_keyword()
            else:
                i = self.rng.choice(self.by_class[name])
                clip = self.train.audio[i]
                if int(i) in self.teacher:
                    soft[len(xs)] = self.teacher[int(i)]
                # Draw only when the option is on, so recipes without it keep their random stream.
                if name == UNKNOWN and self.r.unknown_run_p > 0 and self.rng.random() < self.r.unknown_run_p:
                    n = int(self.rng.integers(2, 6))  # 3-6 words in all
                    k = int(self.rng.integers(0, n + 1))
                    context, run_crop = self.neighbours(i, k, n - k), True
                elif name != UNKNOWN and self.r.context_p > 0 and self.rng.random() < self.r.context_p:
                    context = self.neighbours(i, int(self.rng.integers(1, 3)), int(self.rng.integers(1, 3)))
            xs.append(make_window(clip, self.bg, self.r.augment, self.rng, context,
                                  self.r.context_gap_ms, run_crop))
            ys.append(LABEL_INDEX[name])
        for _ in range(n_neg):  # continuous negative speech at a random offset, augmented like a clip
            xs.append(make_window(negative_crop(self.negatives, self.rng), self.bg, self.r.augment, self.rng))
            ys.append(LABEL_INDEX[UNKNOWN])
        for _ in range(n_mined):  # windows a previous model fired on (mining round), at their offset
            track, start = self.mined[int(self.rng.integers(len(self.mined)))]
            xs.append(make_window(mined_crop(self.negatives, track, start), self.bg, self.r.augment, self.rng))
            ys.append(LABEL_INDEX[UNKNOWN])
        y = np.array(ys, dtype=np.int64)
        target = np.eye(len(CLASSES), dtype=np.float32)[y]
        w = self.r.distill_weight
        for k, t in soft.items():
            target[k] = (1 - w) * target[k] + w * t
        return np.stack(xs), y, target


    def neighbours(self, i: int, n_left: int, n_right: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Unknown words said by the same engine as clip `i` (espeak: any of its voices)."""
        m = self.train.meta[i]
        pool = self.unknown_by_engine.get(m["engine"], self.by_class[UNKNOWN])
        pick = lambda n: [self.train.audio[j] for j in self.rng.choice(pool, n)]  # noqa: E731
        return pick(n_left), pick(n_right)

    def partial_keyword(self) -> np.ndarray:
        """The first or last 30-60 % of a random keyword clip: not a keyword, but close to one."""
        kw = KEYWORDS[self.rng.integers(len(KEYWORDS))]
        clip = self.train.audio[self.rng.choice(self.by_class[kw])]
        n = max(1, int(len(clip) * self.rng.uniform(0.3, 0.6)))
        return clip[:n] if self.rng.random() < 0.5 else clip[-n:]


def spec_augment(logmel: torch.Tensor, r: Recipe, gen: torch.Generator) -> torch.Tensor:
    """Time and frequency masks on log-mel (masked cells set to the window's mean)."""
    if r.specaug_p <= 0:
        return logmel
    out = logmel.clone()
    n, t, f = out.shape
    mean = out.mean(dim=(1, 2))
    apply = torch.rand(n, generator=gen) < r.specaug_p
    for i in torch.nonzero(apply).flatten().tolist():
        for _ in range(r.specaug_time_masks):
            w = int(torch.randint(0, r.specaug_time_width + 1, (1,), generator=gen))
            s = int(torch.randint(0, t - w + 1, (1,), generator=gen))
            out[i, s:s + w, :] = mean[i]
        for _ in range(r.specaug_freq_masks):
            w = int(torch.randint(0, r.specaug_freq_width + 1, (1,), generator=gen))
            s = int(torch.randint(0, f - w + 1, (1,), generator=gen))
            out[i, :, s:s + w] = mean[i]
    return out


def add_converted(train: Clips, data: Path, r: Recipe) -> Clips:
    """The training clips plus the voice-converted copies (data/vc) of `vc_engines` that pass the same
    filters (`trainable`, with the engine check against `vc_engines`)."""
    if not r.vc_engines:
        return train
    present = [e for e in r.vc_engines if (data / "vc" / f"{e}.npz").exists()]  # engines not converted: none
    vc = load_clips(data, present, sub="vc")
    rv = dataclasses.replace(r, engines=r.vc_engines)
    vc = vc.select(lambda m: trainable(m, rv))
    if not len(vc):
        raise ValueError(f"vc_engines = {r.vc_engines} but no converted clips pass the filters (run kws_train.voiceconv)")
    return Clips(train.audio + vc.audio, train.meta + vc.meta)


def split_negatives(data: Path, r: Recipe) -> Tracks | None:
    """Negative-speech tracks for training (None when `negative_share` is 0): the recipe's negative
    engines minus held-out families and validation espeak accents, like the clips."""
    if r.negative_share <= 0 and r.mined_share <= 0:
        return None
    tracks = load_negspeech(data, r.negative_engines or r.engines)
    tracks = tracks.select(lambda m: not held_out(m, r) and espeak_accent(m) not in r.val_espeak_accents)
    if not len(tracks):
        raise ValueError(f"negative_share = {r.negative_share} but no negative-speech tracks under "
                         f"{data / 'negspeech'} for {r.negative_engines or r.engines} (run kws_train.negspeech)")
    return tracks


def teacher_targets(train: Clips, data: Path, r: Recipe) -> dict[int, np.ndarray]:
    """Training-clip index -> the teacher's (tempered) probabilities, for the keyword clips of
    `distill_file`; {} when distillation is off. A keyword clip the file does not cover is an error
    (the file was made for another recipe or data set)."""
    if r.distill_weight == 0:
        return {}
    if not 0 < r.distill_weight <= 1:
        raise ValueError(f"distill_weight must be in (0, 1], got {r.distill_weight}")
    if not r.distill_file:
        raise ValueError("distill_weight > 0 needs distill_file (python -m kws_train.distill)")
    probs = load_teacher(data / r.distill_file)
    out, missing = {}, []
    for i, m in enumerate(train.meta):
        if m["label"] not in KEYWORDS:
            continue
        if m["uid"] not in probs:
            missing.append(m["uid"])
            continue
        out[i] = soft_targets(probs[m["uid"]], r.distill_temperature)
    if missing:
        raise ValueError(f"{data / r.distill_file} has no teacher probabilities for {len(missing)} keyword "
                         f"clips (e.g. {missing[:3]}): rerun kws_train.distill for this recipe and data")
    return out


def example_weights(logits: torch.Tensor, y: torch.Tensor, r: Recipe, step: int) -> torch.Tensor | None:
    """Per-window loss weights: `negative_weight` on `_unknown_`/`_silence_`, and with hard-example
    filtering (`hard_threshold` > 0, from `hard_start` of the steps on) 0 on easy windows: negatives
    whose highest keyword probability is below the threshold, keywords whose own probability reaches
    it. None when both are off (plain mean, as before)."""
    hard = r.hard_threshold > 0 and step >= r.hard_start * r.steps
    if r.negative_weight == 1.0 and not hard:
        return None
    neg = y >= len(KEYWORDS)
    w = torch.ones(len(y), dtype=torch.float32)
    w[neg] = r.negative_weight
    if hard:
        with torch.no_grad():
            p = torch.softmax(logits.detach(), dim=1)
            kw_max = p[:, :len(KEYWORDS)].max(dim=1).values
            p_true = p.gather(1, y[:, None])[:, 0]
            keep = torch.where(neg, kw_max >= r.hard_threshold, p_true < r.hard_threshold)
        w = w * keep.float()
    return w


def weighted_loss(per: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """Mean of per-window losses, or their `w`-weighted mean (0 when no window is kept)."""
    if w is None:
        return per.mean()
    return (per * w).sum() / w.sum().clamp_min(1.0)


def lr_at(step: int, r: Recipe) -> float:
    frac = step / r.steps
    return r.lr * (0.1 ** sum(frac >= b for b in r.lr_boundaries))


def train(r: Recipe, data: Path, out: Path, threads: int = 2) -> dict:
    torch.manual_seed(r.seed)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(r.seed)
    gen = torch.Generator().manual_seed(r.seed)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "train.log", "w", encoding="utf-8")

    def say(msg: str) -> None:
        print(msg, flush=True)
        log.write(msg + "\n")
        log.flush()

    engines = sorted(set(r.engines) | {e for e in _all_engines(data)})
    clips = load_clips(data, engines)
    bg = load_background(data)
    train_clips = add_converted(split_train(clips, r, rng), data, r)
    say(f"recipe {r.name}: {len(train_clips)} training clips from "
        f"{sorted({m['engine'] for m in train_clips.meta})}; held out {r.holdout_families}")
    negatives = split_negatives(data, r)
    if negatives is not None:
        say(f"negative speech: {len(negatives)} tracks, {sum(len(a) for a in negatives.audio) / 16000 / 3600:.2f} h "
            f"from {sorted({m['engine'] for m in negatives.meta})}, {r.negative_share:.0%} of each batch")
    mined = None
    if r.mined_share > 0:
        if not r.mined_file:
            raise ValueError("mined_share > 0 needs mined_file (python -m kws_train.mine)")
        mined = load_mined(data / r.mined_file, negatives)
        if not mined:
            raise ValueError(f"{data / r.mined_file}: no mined window on a training track")
        say(f"mined negatives: {len(mined)} windows from {r.mined_file}, {r.mined_share:.0%} of each batch")
    teacher = teacher_targets(train_clips, data, r)
    if teacher:
        say(f"distillation: teacher probabilities for {len(teacher)} keyword clips from {r.distill_file}, "
            f"weight {r.distill_weight}, temperature {r.distill_temperature}")
    sampler = BatchSampler(train_clips, bg, r, rng, negatives, mined, teacher)
    frontend = TorchFrontend()
    net = TCResNet(r.arch, num_classes=len(CLASSES), dropout=r.dropout, cmn=r.cmn)
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        (no_decay if p.ndim == 1 else decay).append(p)  # BN weights/biases and linear bias
    opt = torch.optim.SGD([{"params": decay, "weight_decay": r.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}], lr=r.lr, momentum=r.momentum)
    t0 = time.time()
    net.train()
    run_loss = run_acc = 0.0
    for step in range(r.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, r)
        x, y, target = sampler.sample()
        x, y, target = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(target)
        with torch.no_grad():
            feats = frontend.mfcc_from_logmel(spec_augment(frontend.logmel(x), r, gen))
        if r.mixup_p > 0 and float(torch.rand(1, generator=gen)) < r.mixup_p:
            lam = float(np.random.default_rng(step).beta(r.mixup_alpha, r.mixup_alpha))
            perm = torch.randperm(len(y), generator=gen)
            feats = lam * feats + (1 - lam) * feats[perm]
            target = lam * target + (1 - lam) * target[perm]
        if r.label_smoothing > 0:
            target = target * (1 - r.label_smoothing) + r.label_smoothing / len(CLASSES)
        logits = net(feats)
        per = torch.sum(-target * F.log_softmax(logits, dim=1), dim=1)
        loss = weighted_loss(per, example_weights(logits, y, r, step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        run_loss = 0.98 * run_loss + 0.02 * float(loss.detach())
        run_acc = 0.98 * run_acc + 0.02 * float((logits.argmax(1) == y).float().mean())
        if (step + 1) % 200 == 0 or step + 1 == r.steps:
            say(f"step {step + 1}/{r.steps} lr {lr_at(step, r):.4f} loss {run_loss:.3f} "
                f"acc {run_acc:.3f} elapsed {time.time() - t0:.0f}s")
    train_s = time.time() - t0
    net.eval()
    torch.save(net.state_dict(), out / "model.pt")
    sets = eval_sets_for(clips, bg, r)
    metrics = evaluate_sets(net, frontend, sets)
    metrics.update({"train_seconds": round(train_s, 1), "train_clips": len(train_clips),
                    "params": count_params(net), "flops": count_flops(net)})
    (out / "recipe.json").write_text(json.dumps(recipe_dict(r), indent=1), encoding="utf-8")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    for name, m in metrics["sets"].items():
        say(f"{name}: keywords {m['keyword_acc']:.4f} all {m['acc']:.4f} (n={m['n']})")
    log.close()
    return metrics


def _all_engines(data: Path) -> list[str]:
    return sorted(p.stem for p in (data / "shards").glob("*.jsonl"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--holdout", help="comma-separated families to hold out (overrides the config)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    r = load_recipe(a.config, seed=a.seed, steps=a.steps,
                    holdout_families=a.holdout.split(",") if a.holdout is not None else None)
    train(r, a.data, a.out, a.threads)


if __name__ == "__main__":
    main()
