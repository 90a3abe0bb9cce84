"""Leave-engine-family-out evaluation of recipe arms, and the ablation table.

Every non-espeak engine family is held out in exactly one of the FOLDS; a run trains on everything
else its recipe allows and is tested on the families it held out, so each family's score comes from
a model that never heard it. An arm's number is the mean over families of those scores (English
engines and other-language voices reported separately), averaged over seeds. All arms get the same
steps, batch and seeds.

Usage:
  python -m kws_train.research run --arms a0-baseline,a1-snr --seeds 1,2 [--steps 4000] [--jobs 2]
  python -m kws_train.research report [--arms ...] > ../RESEARCH-table.md
Runs land in runs/research/<arm>/s<seed>/f<fold>/ and are skipped if already complete.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .data import FAMILIES

#: Held-out groups. Each English non-espeak family once; the other-language festival voices and
#: GnuSpeech spread over the folds. Families whose data is missing are skipped.
FOLDS = [
    ["kal", "it-lp", "cs-dita", "fi-mv", "nsk"],
    ["awb", "it-pc", "cs-krb", "ru", "gnuspeech"],
    ["rms", "cs-machac", "cs-ph", "fi-lj", "ca-ona"],
]
EN_FAMILIES = ["kal", "awb", "rms"]
ARMS_DIR = Path("configs/research")
RUNS = Path("runs/research")


def available_families(data: Path) -> set[str]:
    return {FAMILIES[p.stem] for p in (data / "shards").glob("*.jsonl") if p.stem in FAMILIES}


def run_dir(arm: str, seed: int, fold: int) -> Path:
    return RUNS / arm / f"s{seed}" / f"f{fold}"


def run_one(arm: str, seed: int, fold: int, holdout: list[str], steps: int, data: Path) -> str:
    out = run_dir(arm, seed, fold)
    if (out / "metrics.json").exists():
        return f"{arm} s{seed} f{fold}: done before"
    cmd = [sys.executable, "-m", "kws_train.train", "--config", str(ARMS_DIR / f"{arm}.toml"),
           "--data", str(data), "--out", str(out), "--seed", str(seed), "--steps", str(steps),
           "--holdout", ",".join(holdout), "--threads", "1"]
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "stdout.log", "w") as log:
        r = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        return f"{arm} s{seed} f{fold}: FAILED ({r.returncode}), see {out / 'stdout.log'}"
    return f"{arm} s{seed} f{fold}: {time.time() - t0:.0f}s"


def cmd_run(a) -> None:
    fams = available_families(a.data)
    folds = [[f for f in fold if f in fams] for fold in FOLDS]
    jobs = [(arm, seed, i, fold) for arm in a.arms for seed in a.seeds for i, fold in enumerate(folds) if fold]
    with ThreadPoolExecutor(a.jobs) as pool:
        for msg in pool.map(lambda j: run_one(j[0], j[1], j[2], j[3], a.steps, a.data), jobs):
            print(msg, flush=True)


def family_scores(arm: str, seed: int, kind: str = "sets") -> dict[str, dict]:
    """Per held-out family (and engine) of one arm and seed: the metrics from the fold holding it out."""
    out = {}
    for i, fold in enumerate(FOLDS):
        p = run_dir(arm, seed, i) / "metrics.json"
        if not p.exists():
            continue
        m = json.loads(p.read_text())
        sets = m.get(kind, {})
        for name, v in sets.items():
            if name.startswith("test-"):
                out[name[5:]] = v
        out.setdefault("_silence", sets.get("silence-mix", {}))
        out.setdefault("_val", sets.get("val-espeak-accents", {}))
        out.setdefault("_time", []).append(m.get("train_seconds", 0.0))
    return out


def _mean(xs):
    xs = [x for x in xs if x is not None and x == x]
    return statistics.mean(xs) if xs else float("nan")


def summarize(arm: str, seeds: list[int]) -> dict | None:
    per_seed = []
    for s in seeds:
        f = family_scores(arm, s)
        c = family_scores(arm, s, "calibrated")
        fams = [k for k in f if k in FOLDS[0] + FOLDS[1] + FOLDS[2]]
        if not fams:
            continue
        en = [k for k in fams if k in EN_FAMILIES]
        other = [k for k in fams if k not in EN_FAMILIES]
        per_seed.append({
            "kw_en": _mean([f[k]["keyword_acc"] for k in en]),
            "kw_other": _mean([f[k]["keyword_acc"] for k in other]),
            "kw_all": _mean([f[k]["keyword_acc"] for k in fams]),
            "all_all": _mean([f[k]["acc"] for k in fams]),
            "kw_all_cal": _mean([c[k]["keyword_acc"] for k in fams if k in c]),
            "unknown_recall": _mean([f[k]["recall"].get("_unknown_") for k in fams]),
            "silence": f["_silence"].get("acc"),
            "val_kw": f["_val"].get("keyword_acc"),
            "time": _mean(f["_time"]),
            "families": {k: f[k]["keyword_acc"] for k in sorted(f) if not k.startswith("_")},
        })
    if not per_seed:
        return None
    keys = [k for k in per_seed[0] if k != "families"]
    summary = {k: _mean([p[k] for p in per_seed]) for k in keys}
    summary["spread"] = {k: (max(p[k] for p in per_seed) - min(p[k] for p in per_seed)) / 2 for k in keys}
    fam_names = sorted({n for p in per_seed for n in p["families"]})
    summary["families"] = {n: _mean([p["families"].get(n) for p in per_seed]) for n in fam_names}
    summary["seeds"] = len(per_seed)
    return summary


def cmd_report(a) -> None:
    rows = [(arm, summarize(arm, a.seeds)) for arm in a.arms]
    rows = [(arm, s) for arm, s in rows if s]
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    pm = lambda s, k: f"{pct(s[k])} ± {pct(s['spread'][k])}" if s["seeds"] > 1 else pct(s[k])  # noqa: E731
    print("| arm | seeds | keywords, EN engines | keywords, other voices | keywords, all held-out | "
          "all 12, all held-out | keywords, calibrated | `_unknown_` recall | `_silence_` (noise+music) | "
          "val espeak accents | train s/run |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for arm, s in rows:
        print(f"| {arm} | {s['seeds']} | {pm(s, 'kw_en')} | {pm(s, 'kw_other')} | {pm(s, 'kw_all')} | "
              f"{pm(s, 'all_all')} | {pm(s, 'kw_all_cal')} | {pct(s['unknown_recall'])} | {pct(s['silence'])} | "
              f"{pct(s['val_kw'])} | {s['time']:.0f} |")
    fams = sorted({n for _, s in rows for n in s["families"]})
    print("\nPer held-out engine / family, keyword accuracy (%):\n")
    print("| arm | " + " | ".join(fams) + " |")
    print("|---" * (len(fams) + 1) + "|")
    for arm, s in rows:
        print(f"| {arm} | " + " | ".join(pct(s["families"].get(n, float("nan"))) for n in fams) + " |")
    if a.json:
        Path(a.json).write_text(json.dumps({arm: s for arm, s in rows}, indent=1))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["run", "report"])
    p.add_argument("--arms", required=True, type=lambda s: s.split(","))
    p.add_argument("--seeds", default="1,2", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--json", help="also write the summary as JSON here (report)")
    a = p.parse_args(argv)
    cmd_run(a) if a.command == "run" else cmd_report(a)


if __name__ == "__main__":
    main()
