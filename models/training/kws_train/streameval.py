"""Streaming recall and false alarms per hour of an ONNX model on a manifest corpus, at a grid of
thresholds, per keyword, overall and per category: for choosing checkpoints and thresholds on the
streaming validation set (`valcorpus.py`), never on the evaluation corpus.

Same numbers as `kws-client eval` (client/src/eval.rs, models/src/eval.rs): windows and features from
`stream.windows` (the reference the Rust frontend matches), smoothed posteriors exactly as
`stream.smoothed` (float64 mean of the last S windows, rounded to float32), decoding at grid point t
with every keyword at threshold t and the refractory period (`GridDecoder`), events at the centre of
their window matched to labels widened by the tolerance (`match_events`). FA/h = false alarms / hours
of all audio; per category, false alarms in that category's files / their hours.

Usage:
  python -m kws_train.streameval --model-dir ../tc-resnet8 [--variant int8] data/valcorpus/manifest.jsonl \
      [--thresholds 0.3,0.5,...] [--json out.json]
  python -m kws_train.streameval --model runs/x/model.onnx data/valcorpus/manifest.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import wave
from pathlib import Path

import numpy as np

from . import KEYWORDS, SAMPLE_RATE
from .stream import DecoderConfig, smoothing_windows, windows

DEFAULT_GRID = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995,
                0.998, 0.999]


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (SAMPLE_RATE, 1, 2):
            raise ValueError(f"{path}: need 16 kHz mono s16")
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0


def smoothed_fast(probs: np.ndarray, s: int) -> np.ndarray:
    """`stream.smoothed` vectorized, bit for bit: float64 running mean of the last `s` windows
    (fewer at the start, summed oldest first as numpy's axis-0 mean does), rounded to float32."""
    p = np.asarray(probs, dtype=np.float64)
    n = len(p)
    out = np.empty_like(p)
    for i in range(min(s - 1, n)):
        out[i] = p[:i + 1].mean(axis=0)
    if n >= s:
        acc = p[0:n - s + 1].copy()
        for j in range(1, s):
            acc += p[j:n - s + 1 + j]
        out[s - 1:] = acc / s
    return out.astype(np.float32)


def grid_events(sm: np.ndarray, start_ms: np.ndarray, end_ms: np.ndarray, grid: list[float],
                refractory_ms: int, keywords: int = len(KEYWORDS)) -> list[list[tuple[int, int]]]:
    """Events (class, time_ms) at every grid threshold, as `GridDecoder` (models/src/eval.rs)."""
    kw = sm[:, :keywords]
    best = np.argmax(kw, axis=1)  # ties: lowest class index
    score = kw[np.arange(len(kw)), best]
    times = (start_ms + end_ms) // 2
    out = []
    for t in grid:
        cand = np.nonzero(score >= np.float32(t))[0]
        ev, deadline, k = [], 0, 0
        while k < len(cand):
            i = cand[k]
            if end_ms[i] >= deadline:
                ev.append((int(best[i]), int(times[i])))
                deadline = int(end_ms[i]) + refractory_ms
                # next candidate window ending at or after the deadline
                k += max(1, int(np.searchsorted(end_ms[cand[k:]], deadline, side="left")))
            else:
                k += 1
        out.append(ev)
    return out


def match_events(events: list[tuple[int, int]], labels: list[tuple[int, int, int]], keywords: int,
                 tolerance_ms: int) -> dict:
    """`kws_models::eval::match_events`: events in time order match the earliest unmatched label of
    their keyword whose span widened by the tolerance holds the event time."""
    events = sorted(events, key=lambda e: (e[1], e[0]))
    labels = sorted(labels, key=lambda l: (l[1], l[2], l[0]))
    matched = [False] * len(labels)
    tp, fp, fn = [0] * keywords, [0] * keywords, [0] * keywords
    conf = 0

    def widened(l, t):
        return max(l[1] - tolerance_ms, 0) <= t <= l[2] + tolerance_ms

    for c, t in events:
        hit = next((i for i, l in enumerate(labels) if not matched[i] and l[0] == c and widened(l, t)), None)
        if hit is not None:
            matched[hit] = True
            tp[c] += 1
        else:
            fp[c] += 1
            conf += any(l[0] != c and widened(l, t) for l in labels)
    for l, m in zip(labels, matched):
        if not m:
            fn[l[0]] += 1
    return {"tp": tp, "fp": fp, "fn": fn, "confusions": conf}


@dataclasses.dataclass
class FileResult:
    wav: str
    category: str
    seconds: float
    counts: list[dict]  # per grid point


def score_file(session, x: np.ndarray, dec: DecoderConfig, batch: int = 512):
    wins = windows(x, dec.hop_frames)
    if not wins:
        return np.zeros((0, len(KEYWORDS) + 2), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)
    feats = np.stack([w[2] for w in wins]).astype(np.float32)
    probs = np.concatenate([session.run(["probs"], {"features": feats[i:i + batch]})[0]
                            for i in range(0, len(feats), batch)])
    return probs, np.array([w[0] for w in wins], np.int64), np.array([w[1] for w in wins], np.int64)


def evaluate(session, manifest: Path, grid: list[float], dec: DecoderConfig, tolerance_ms: int = 500,
             log=None) -> dict:
    base = manifest.parent
    rows = [json.loads(x) for x in manifest.read_text(encoding="utf-8").splitlines()
            if x.strip() and not x.startswith("#")]
    s = smoothing_windows(dec)
    files = []
    for r in rows:
        x = read_wav(base / r["wav"])
        probs, st, en = score_file(session, x, dec)
        sm = smoothed_fast(probs, s)
        evs = grid_events(sm, st, en, grid, dec.refractory_ms)
        labels = [(KEYWORDS.index(l["keyword"]), l["start_ms"], l["end_ms"]) for l in r.get("labels", [])
                  if l["keyword"] in KEYWORDS]
        meta = r.get("meta", {})
        cat = meta.get("category") or ("negative" if r.get("negative") else "labelled")
        files.append(FileResult(r["wav"], cat, len(x) / SAMPLE_RATE,
                                [match_events(e, labels, len(KEYWORDS), tolerance_ms) for e in evs]))
        if log:
            log(f"{r['wav']}: {cat}, {len(x) / SAMPLE_RATE:.1f} s, {len(labels)} labels")
    return report(files, grid, dec, tolerance_ms)


def _rates(tp: int, fp: int, fn: int, hours: float) -> dict:
    return {"tp": tp, "fp": fp, "fn": fn, "recall": tp / (tp + fn) if tp + fn else None,
            "precision": tp / (tp + fp) if tp + fp else None, "fa_per_h": fp / hours if hours else None}


def operating_point(points: list[dict], max_fa: float) -> dict | None:
    """Among grid points with FA/h <= max_fa, the highest recall (no labels: 0), the first in grid
    order on ties: `operating_point` of client/src/eval.rs."""
    best = None
    for p in points:
        if p["fa_per_h"] is not None and p["fa_per_h"] <= max_fa:
            if best is None or (p["recall"] or 0.0) > (best["recall"] or 0.0):
                best = p
    return best


def report(files: list[FileResult], grid: list[float], dec: DecoderConfig, tolerance_ms: int) -> dict:
    hours = sum(f.seconds for f in files) / 3600
    per_kw = {k: [] for k in KEYWORDS}
    overall, categories = [], {}
    cats = sorted({f.category for f in files})
    for g, t in enumerate(grid):
        tot = np.zeros(3, np.int64)
        for ki, k in enumerate(KEYWORDS):
            c = np.array([[f.counts[g]["tp"][ki], f.counts[g]["fp"][ki], f.counts[g]["fn"][ki]] for f in files]).sum(0)
            tot += c
            per_kw[k].append({"threshold": t, **_rates(*map(int, c), hours)})
        overall.append({"threshold": t, **_rates(*map(int, tot), hours),
                        "confusions": sum(f.counts[g]["confusions"] for f in files)})
        for cat in cats:
            fs = [f for f in files if f.category == cat]
            h = sum(f.seconds for f in fs) / 3600
            tp = sum(sum(f.counts[g]["tp"]) for f in fs)
            fp = sum(sum(f.counts[g]["fp"]) for f in fs)
            fn = sum(sum(f.counts[g]["fn"]) for f in fs)
            categories.setdefault(cat, {"files": len(fs), "hours": round(h, 4), "points": []})["points"].append(
                {"threshold": t, **_rates(tp, fp, fn, h)})
    ops = {name: {f"fa<={m}": operating_point(pts, m) for m in (1.0, 0.1)}
           for name, pts in [("overall", overall), *per_kw.items()]}
    return {"hours": round(hours, 4), "seconds": round(hours * 3600, 3), "files": len(files), "tolerance_ms": tolerance_ms,
            "decoder": dataclasses.asdict(dec), "grid": grid, "overall": overall, "keywords": per_kw,
            "categories": categories, "operating_points": ops}


def _pct(v):
    return "-" if v is None else f"{100 * v:.1f} %"


def print_report(rep: dict, out=sys.stdout) -> None:
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p(f"{rep['files']} files, {rep['hours']:.3f} h, tolerance {rep['tolerance_ms']} ms, decoder {rep['decoder']}")
    p("\noverall (all keywords; FA/h over all audio)\n")
    p("| threshold | recall | precision | FA/h | " + " | ".join(f"FA/h {c}" for c in rep["categories"]) + " |")
    p("|---" * (4 + len(rep["categories"])) + "|")
    for g, o in enumerate(rep["overall"]):
        cat = " | ".join(f"{c['points'][g]['fa_per_h']:.1f}" for c in rep["categories"].values())
        p(f"| {o['threshold']} | {_pct(o['recall'])} | {_pct(o['precision'])} | {o['fa_per_h']:.1f} | {cat} |")
    p("\nper keyword: recall / FA/h at each threshold\n")
    p("| keyword | " + " | ".join(str(t) for t in rep["grid"]) + " |")
    p("|---" * (1 + len(rep["grid"])) + "|")
    for k, pts in rep["keywords"].items():
        p(f"| {k} | " + " | ".join(f"{_pct(x['recall'])} / {x['fa_per_h']:.1f}" for x in pts) + " |")
    p("\noperating points (highest recall at FA/h <= target)\n")
    for name, o in rep["operating_points"].items():
        parts = []
        for m, pt in o.items():
            parts.append(f"{m}: " + ("none" if pt is None else f"thr {pt['threshold']} recall {_pct(pt['recall'])} "
                                     f"FA/h {pt['fa_per_h']:.2f}"))
        p(f"- {name}: " + "; ".join(parts))


def load_model(a) -> tuple[object, DecoderConfig]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    dec = DecoderConfig()
    if a.model_dir:
        m = json.loads((a.model_dir / "manifest.json").read_text())
        path = a.model_dir / m["files"][a.variant]["path"]
        dec = DecoderConfig(smoothing_ms=m["decoder"]["smoothing_ms"], refractory_ms=m["decoder"]["refractory_ms"],
                            hop_frames=m["window"].get("default_hop_frames", 2))
    else:
        path = a.model
    if a.smoothing_ms is not None:
        dec.smoothing_ms = a.smoothing_ms
    if a.refractory_ms is not None:
        dec.refractory_ms = a.refractory_ms
    if a.hop_frames is not None:
        dec.hop_frames = a.hop_frames
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]), dec


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest", type=Path)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--model-dir", type=Path, help="a model directory with manifest.json")
    g.add_argument("--model", type=Path, help="an ONNX file ([N,98,40] -> probs [N,12]); decoder defaults")
    p.add_argument("--variant", default="int8", choices=["fp32", "int8"])
    p.add_argument("--thresholds", type=lambda s: [float(x) for x in s.split(",")], default=DEFAULT_GRID)
    p.add_argument("--tolerance-ms", type=int, default=500)
    p.add_argument("--smoothing-ms", type=int)
    p.add_argument("--refractory-ms", type=int)
    p.add_argument("--hop-frames", type=int)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path)
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    session, dec = load_model(a)
    log = None if a.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    rep = evaluate(session, a.manifest, a.thresholds, dec, a.tolerance_ms, log)
    rep["model"] = str(a.model_dir or a.model)
    print_report(rep)
    if a.json:
        a.json.write_text(json.dumps(rep, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
