"""Per-keyword operating points calibrated on the streaming validation set (detection-quality issue,
lever 6): the thresholds a user gets by default must be a *streaming* operating point, chosen for a
false-alarm budget on continuous speech, not an isolated-word one.

Input: a cache of first-stage outputs per validation stream (`verifier embed`: smoothed posteriors,
window start/end, embeddings, labels, category). Never the evaluation corpus.

Decoding is the shipped decoder's rule (`stream.decode`, models/src/decoder.rs): among keywords whose
smoothed posterior is >= their own threshold the highest fires (ties: lowest class index) unless the
refractory period of the previous event (any keyword) runs; the event time is the window's centre;
events are matched to labels as `kws-client eval` does (`streameval.match_events`, 500 ms).

Search: for a Lagrange weight lam, coordinate ascent over the keywords' thresholds (each from `--grid`)
maximizes true positives - lam * false positives, starting from the best single threshold; the lam
whose solution has the most true positives within the budget wins. With `--folds 2` the same search
runs on each half of the streams (alternate files of each category) and is scored on the other half,
which says how much of the calibrated gain is fitted noise; the thresholds written are those of the
search on all streams.

With `--head`, the same search calibrates a cascade instead: candidates of the first stage at `--t1`
(all keywords; `--candidate-rule`: the highest keyword's score or the keywords' summed score is
compared with it), verifier thresholds per keyword (`verifier.cascade_events`' rule).

Usage (models/training):
  python -m kws_train.calibrate --cache runs/verifier/val2-cache --budget 5 --json cal.json \
      [--write-manifest ../tc-resnet8/manifest.json]
  python -m kws_train.calibrate --cache runs/verifier/val2-cache --budget 1 --head runs/verifier/h/head.pt --t1 0.7
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from . import KEYWORDS

DEFAULT_GRID = [0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.993, 0.995, 0.997, 0.998, 0.999, 0.9995,
                0.9998, 0.9999]
NK = len(KEYWORDS)


def decode(sm: np.ndarray, start: np.ndarray, end: np.ndarray, th: np.ndarray, refractory_ms: int) -> list[tuple[int, int]]:
    """Events (class, centre ms) of one stream at per-keyword thresholds `th` (float32 [10])."""
    kw = sm[:, :NK]
    ok = kw >= th[None, :]
    cand = np.nonzero(ok.any(axis=1))[0]
    if len(cand) == 0:
        return []
    masked = np.where(ok[cand], kw[cand], np.float32(-1.0))
    best = np.argmax(masked, axis=1)
    ev, deadline = [], -1
    ends = end[cand]
    for j in range(len(cand)):
        if ends[j] >= deadline:
            i = cand[j]
            ev.append((int(best[j]), int((start[i] + end[i]) // 2)))
            deadline = int(ends[j]) + refractory_ms
    return ev


def count(events: list[tuple[int, int]], labels: list[tuple[int, int, int]], tolerance_ms: int) -> np.ndarray:
    """[10, 3] true positives, false positives, misses per keyword (`streameval.match_events`)."""
    from .streameval import match_events

    m = match_events(events, labels, NK, tolerance_ms)
    return np.array([m["tp"], m["fp"], m["fn"]], np.int64).T


def cascade_decode(sm: np.ndarray, start: np.ndarray, end: np.ndarray, v: np.ndarray, refractory_ms: int,
                   t1: float, verify, reject_gap_ms: int, rule: str = "best_keyword") -> list[tuple[int, int]]:
    """Events of the two-stage rule (`verifier.cascade_events`) with per-keyword verifier thresholds
    `v`: a candidate (candidate score of `rule` >= t1, past the deadline; `verifier.candidate_scores`)
    becomes an event when the verifier's probability of the first stage's keyword is >= v[keyword]; a
    rejected one blocks `reject_gap_ms`."""
    from .verifier import candidate_scores

    best, score = candidate_scores(sm, rule)
    ev, deadline = [], -1
    for i in np.nonzero(score >= np.float32(t1))[0]:
        if end[i] < deadline:
            continue
        k = int(best[i])
        if verify(int(i))[k] >= v[k]:
            ev.append((k, int((start[i] + end[i]) // 2)))
            deadline = int(end[i]) + refractory_ms
        else:
            deadline = int(end[i]) + reject_gap_ms
    return ev


class Streams:
    """The cached streams of one split, with everything decode() and count() need. With `cascade`
    (t1, verifier, reject_gap_ms, candidate rule), the thresholds searched are the verifier's, per keyword."""

    def __init__(self, files: list[dict], refractory_ms: int, tolerance_ms: int, cascade=None):
        self.files = files
        self.cascade = cascade
        self.refractory_ms, self.tolerance_ms = refractory_ms, tolerance_ms
        self.hours = sum(float(f["seconds"]) for f in files) / 3600
        self.labels = [[tuple(map(int, l)) for l in f["labels"]] for f in files]
        self._memo: dict[bytes, np.ndarray] = {}

    def counts(self, th: np.ndarray) -> np.ndarray:
        th = np.asarray(th, np.float32)
        key = th.tobytes()
        if key not in self._memo:
            c = np.zeros((NK, 3), np.int64)
            for f, lab in zip(self.files, self.labels):
                if self.cascade is None:
                    ev = decode(f["sm"], f["start"], f["end"], th, self.refractory_ms)
                else:
                    t1, verifier, gap, rule = self.cascade
                    ev = cascade_decode(f["sm"], f["start"], f["end"], th, self.refractory_ms, t1, verifier(f), gap,
                                        rule)
                c += count(ev, lab, self.tolerance_ms)
            self._memo[key] = c
        return self._memo[key]

    def summary(self, th: np.ndarray) -> dict:
        c = self.counts(th)
        tp, fp, fn = (int(x) for x in c.sum(0))
        return {"recall": tp / max(1, tp + fn), "fa_per_h": fp / self.hours, "tp": tp, "fp": fp, "fn": fn,
                "keywords": {k: {"tp": int(c[i, 0]), "fp": int(c[i, 1]), "fn": int(c[i, 2]),
                                 "recall": int(c[i, 0]) / max(1, int(c[i, 0] + c[i, 2])),
                                 "fa_per_h": int(c[i, 1]) / self.hours} for i, k in enumerate(KEYWORDS)}}


def best_single(s: Streams, grid: list[float], max_fp: float) -> float:
    """The single threshold (all keywords) with the most true positives within the budget (the
    highest threshold of the grid if none fits)."""
    best, best_tp = grid[-1], -1
    for t in grid:
        c = s.counts(np.full(NK, t, np.float32)).sum(0)
        if c[1] <= max_fp and c[0] > best_tp:
            best, best_tp = t, int(c[0])
    return best


def search(s: Streams, grid: list[float], budget_fa_h: float, sweeps: int = 3,
           lams: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)) -> tuple[np.ndarray, dict]:
    """Per-keyword thresholds with the most true positives within the budget (see the module doc).
    `info["within_budget"]` is False when not even the highest grid threshold for every keyword fits;
    the thresholds returned are then the highest ones."""
    max_fp = budget_fa_h * s.hours
    t0 = best_single(s, grid, max_fp)
    start = np.full(NK, t0, np.float32)
    c0 = s.counts(start).sum(0)
    best_th, best_tp = start, int(c0[0]) if c0[1] <= max_fp else -1
    trace = []
    for lam in lams:
        th = start.copy()
        obj = lambda c: c[0] - lam * c[1]  # noqa: E731
        for _ in range(sweeps):
            moved = False
            for k in range(NK):
                cur = obj(s.counts(th).sum(0))
                for g in grid:
                    if np.float32(g) == th[k]:
                        continue
                    cand = th.copy()
                    cand[k] = g
                    v = obj(s.counts(cand).sum(0))
                    if v > cur + 1e-9:
                        th, cur, moved = cand, v, True
            if not moved:
                break
        c = s.counts(th).sum(0)
        trace.append({"lambda": lam, "tp": int(c[0]), "fp": int(c[1])})
        if c[1] <= max_fp and c[0] > best_tp:
            best_th, best_tp = th, int(c[0])
    return best_th, {"single_threshold": float(t0), "lambdas": trace, "within_budget": best_tp >= 0}


def split(files: list[dict], folds: int) -> list[list[dict]]:
    """Alternate files of each category into `folds` parts (streams are whole units)."""
    parts = [[] for _ in range(folds)]
    by_cat: dict[str, list[dict]] = {}
    for f in files:
        by_cat.setdefault(str(f["category"]), []).append(f)
    for fs in by_cat.values():
        for i, f in enumerate(fs):
            parts[i % folds].append(f)
    return parts


def as_dict(th: np.ndarray) -> dict[str, float]:
    return {k: round(float(th[i]), 6) for i, k in enumerate(KEYWORDS)}


def evaluate(files: list[dict], dec: dict, manifests: list[Path], tolerance_ms: int, out: Path | None) -> None:
    """Recall and FA/h of each manifest's thresholds on the cached streams (for reporting; no search)."""
    every = Streams(files, dec["refractory_ms"], tolerance_ms)
    cats = sorted({str(f["category"]) for f in files})
    by_cat = {c: Streams([f for f in files if str(f["category"]) == c], dec["refractory_ms"], tolerance_ms)
              for c in cats}
    res = []
    print(f"{len(files)} streams, {every.hours:.2f} h")
    print("| manifest | version | recall | FA/h | " + " | ".join(f"FA/h {c}" for c in cats) + " |")
    for mp in manifests:
        m = json.loads(mp.read_text())
        th = np.array([m["thresholds"].get(k, 2.0) for k in KEYWORDS], np.float32)
        r = every.summary(th)
        per = {c: s.summary(th)["fa_per_h"] for c, s in by_cat.items()}
        res.append({"manifest": str(mp), "version": m.get("version"), "thresholds": m["thresholds"], **r,
                    "fa_per_h_by_category": per})
        print(f"| {mp} | {m.get('version')} | {100 * r['recall']:.1f} % | {r['fa_per_h']:.1f} | "
              + " | ".join(f"{per[c]:.1f}" for c in cats) + " |")
    if out:
        out.write_text(json.dumps({"hours": every.hours, "files": len(files), "results": res}, indent=1))


#: Licence line of the verifier section (feature models + our head); see models/speech-embedding/README.md.
VERIFIER_LICENCE = (
    "head: trained by this project on synthesized speech only (same terms as the first-stage model); "
    "feature models: Google speech_embedding (Apache-2.0) as ported to ONNX in the openwakeword 0.4.0 wheel "
    "(Apache-2.0 package; its README puts its pre-trained models under CC BY-NC-SA 4.0, see "
    "models/speech-embedding/README.md: to be confirmed by the owner before commercial use)")


def verifier_section(model_dir: Path, head: Path, t1: float, thresholds: dict[str, float], reject_gap_ms: int,
                     old: dict | None, candidate_rule: str = "best_keyword", view_shifts: int = 0,
                     centre_offset_ms: int = 0) -> dict:
    """The manifest's `verifier` section (`kws_models::manifest::VerifierSpec`): the head is copied
    into `<model_dir>/verifier/head.onnx`; the feature models are the shared ones in
    models/speech-embedding (their sha256 are the pinned ones of `verifier.FEATURE_FILES`)."""
    import hashlib
    import shutil

    from .verifier import FEATURE_FILES, WINDOW_EMB

    dest = model_dir / "verifier" / "head.onnx"
    dest.parent.mkdir(parents=True, exist_ok=True)
    if head.resolve() != dest.resolve():
        shutil.copyfile(head, dest)
    feats = model_dir.parent / "speech-embedding"
    for name, sha in FEATURE_FILES.items():
        got = hashlib.sha256((feats / name).read_bytes()).hexdigest()
        if got != sha:
            raise SystemExit(f"{feats / name}: sha256 {got}, expected {sha}")
    return {
        "features": {"dir": "../speech-embedding",
                     "mel": {"path": "melspectrogram.onnx", "sha256": FEATURE_FILES["melspectrogram.onnx"]},
                     "embedding": {"path": "embedding_model.onnx", "sha256": FEATURE_FILES["embedding_model.onnx"]}},
        "head": {"path": "verifier/head.onnx", "sha256": hashlib.sha256(dest.read_bytes()).hexdigest()},
        "embeddings_per_view": WINDOW_EMB,
        "centre_offset_ms": centre_offset_ms,
        "view_shifts": view_shifts,
        "candidate_rule": candidate_rule,
        "first_stage_threshold": t1,
        "thresholds": thresholds,
        "reject_gap_ms": reject_gap_ms,
        "licence": (old or {}).get("licence", VERIFIER_LICENCE),
    }


def _without(args: list[str], flag: str) -> list[str]:
    """`args` without `flag` and its value (either form)."""
    out, skip = [], False
    for x in args:
        if skip:
            skip = False
        elif x == flag:
            skip = True
        elif not x.startswith(flag + "="):
            out.append(x)
    return out


def main(argv: list[str] | None = None) -> None:
    from .verifier import load_cache

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, required=True, help="`verifier embed` cache of the validation streams")
    p.add_argument("--budget", type=float, help="false alarms per hour, all keywords together")
    p.add_argument("--evaluate", type=Path, nargs="+", metavar="MANIFEST",
                   help="no search: recall and FA/h (overall, per category) at these manifests' thresholds")
    p.add_argument("--grid", type=lambda x: [float(v) for v in x.split(",")], default=DEFAULT_GRID)
    p.add_argument("--tolerance-ms", type=int, default=500)
    p.add_argument("--folds", type=int, default=2)
    p.add_argument("--head", type=Path, help="verifier head (head.pt): calibrate the verifier's thresholds of a cascade")
    p.add_argument("--clip-table", type=Path, help="per-clip verifier probabilities (`verifier clip-table`), as the "
                   "Rust verifier computes them; without it the views are cut from the cache's stream embeddings")
    p.add_argument("--t1", type=lambda x: [float(v) for v in x.split(",")], default=[0.7],
                   help="first-stage threshold of the cascade (all keywords); a comma list: the one whose best single "
                        "verifier threshold keeps the most keywords within the budget is chosen (per fold, too)")
    p.add_argument("--reject-gap-ms", type=int, default=200)
    p.add_argument("--candidate-rule", choices=("best_keyword", "keyword_mass"), default="best_keyword",
                   help="what the cascade's first stage compares with t1 (`verifier.candidate_scores`)")
    p.add_argument("--single", action="store_true",
                   help="write the best single threshold (all keywords) instead of the per-keyword search's; use it "
                        "when the held-out halves show the per-keyword shape does not carry over")
    p.add_argument("--json", type=Path)
    p.add_argument("--write-manifest", type=Path, help="write the thresholds and the operating point into this manifest")
    p.add_argument("--validation-set", default="", help="how the validation streams were made (for the manifest)")
    a = p.parse_args(argv)
    dec = json.loads((a.cache / "decoder.json").read_text())
    files = load_cache(a.cache)
    t0 = time.time()
    if a.evaluate:
        evaluate(files, dec, a.evaluate, a.tolerance_ms, a.json)
        return
    if a.budget is None:
        p.error("--budget or --evaluate is required")
    cascade = None
    if a.head:
        from .verifier import clip_table_offset_ms, lazy_verifier, load_clip_table, load_head

        if a.clip_table:
            # The table answers for the views it was cut at (`clip-table --offset-ms`), so candidates look
            # their clips up at that offset, and the manifest gets it as `centre_offset_ms`.
            offset_ms = clip_table_offset_ms(a.clip_table)
            verifier = lazy_verifier(files, None, offset_ms, load_clip_table(a.clip_table))
        else:
            verifier = lazy_verifier(files, load_head(a.head), 0.0)
        cascade = (a.t1, verifier, a.reject_gap_ms, a.candidate_rule)

    def mk(fs, t1=None):
        c = None if cascade is None else (t1 if t1 is not None else a.t1[0], cascade[1], cascade[2], cascade[3])
        return Streams(fs, dec["refractory_ms"], a.tolerance_ms, c)

    def choose_t1(fs) -> float | None:
        """The t1 of `--t1` whose best single verifier threshold keeps the most keywords within the
        budget (ties: the higher t1, fewer candidates); None without a cascade."""
        if cascade is None:
            return None
        best = None
        for t1 in a.t1:
            s_ = mk(fs, t1)
            c = s_.counts(np.full(NK, best_single(s_, a.grid, a.budget * s_.hours), np.float32)).sum(0)
            ok = c[1] <= a.budget * s_.hours
            key = (ok, int(c[0]) if ok else -int(c[1]), t1)
            best = max(best, key) if best else key
        return best[2]

    if a.budget is not None:
        chosen = choose_t1(files)
        every = mk(files, chosen)
    out = {"cache": str(a.cache), "head": str(a.head) if a.head else None,
           "t1": chosen if a.head else None, "t1_grid": a.t1 if a.head else None,
           "candidate_rule": a.candidate_rule if a.head else None, "reject_gap_ms": a.reject_gap_ms if a.head else None, "hours": every.hours, "files": len(files), "budget_fa_per_h": a.budget,
           "decoder": dec, "grid": a.grid, "folds": []}
    if a.folds > 1:
        parts = split(files, a.folds)
        for i in range(a.folds):
            fit_files = [f for j, p_ in enumerate(parts) if j != i for f in p_]
            t1 = choose_t1(fit_files)
            fit, held = mk(fit_files, t1), mk(parts[i], t1)
            th, info = search(fit, a.grid, a.budget)
            single = np.full(NK, info["single_threshold"], np.float32)
            out["folds"].append({"t1": t1, "fit_hours": fit.hours, "held_hours": held.hours, "thresholds": as_dict(th),
                                 "fit": fit.summary(th), "held": held.summary(th),
                                 "single_threshold": info["single_threshold"],
                                 "single_fit": fit.summary(single), "single_held": held.summary(single)})
    th, info = search(every, a.grid, a.budget)
    out.update(thresholds=as_dict(th), search=info, result=every.summary(th),
               single_result=every.summary(np.full(NK, info["single_threshold"], np.float32)),
               search_s=round(time.time() - t0, 1))
    pr = lambda *x: print(*x)  # noqa: E731
    pr(f"{len(files)} streams, {every.hours:.2f} h, budget {a.budget} FA/h ({a.budget * every.hours:.1f} false alarms)"
       + ("" if chosen is None else f"; cascade t1 {chosen} (of {a.t1})"))
    for i, fo in enumerate(out["folds"]):
        pr(("" if fo["t1"] is None else f"t1 {fo['t1']} ") + f"fold {i}: per-keyword fit {100 * fo['fit']['recall']:.1f} % / {fo['fit']['fa_per_h']:.1f} FA/h -> held "
           f"{100 * fo['held']['recall']:.1f} % / {fo['held']['fa_per_h']:.1f} FA/h; single {fo['single_threshold']} fit "
           f"{100 * fo['single_fit']['recall']:.1f} % / {fo['single_fit']['fa_per_h']:.1f} -> held "
           f"{100 * fo['single_held']['recall']:.1f} % / {fo['single_held']['fa_per_h']:.1f}")
    r, sr = out["result"], out["single_result"]
    pr(f"all streams: per-keyword {100 * r['recall']:.1f} % / {r['fa_per_h']:.2f} FA/h; single threshold "
       f"{info['single_threshold']}: {100 * sr['recall']:.1f} % / {sr['fa_per_h']:.2f} FA/h")
    pr("thresholds: " + ", ".join(f"{k} {v:g}" for k, v in out["thresholds"].items()))
    if not info["within_budget"]:
        pr(f"warning: no thresholds on the grid keep {a.budget} FA/h on these streams; the highest are shown")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    if a.write_manifest and not info["within_budget"]:
        raise SystemExit("not writing the manifest: the budget is not met")
    if a.write_manifest and a.single:
        out["thresholds"] = as_dict(np.full(NK, info["single_threshold"], np.float32))
        r = sr
        out["folds"] = [{**fo, "held": fo["single_held"]} for fo in out["folds"]]
    if a.write_manifest:
        m = json.loads(a.write_manifest.read_text())
        if a.head:
            if a.head.suffix != ".onnx" or not a.clip_table:
                raise SystemExit("--write-manifest with --head needs head.onnx and --clip-table (the Rust verifier's "
                                 "per-clip probabilities)")
            from .verifier import clip_table_view_shifts

            # `offset_ms`: the table's, read above where the candidates were looked up.
            if offset_ms != int(offset_ms):
                raise SystemExit(f"{a.clip_table}: --offset-ms {offset_ms:g} is not whole milliseconds "
                                 "(manifest `verifier.centre_offset_ms`)")
            m["verifier"] = verifier_section(a.write_manifest.parent, a.head, chosen, out["thresholds"],
                                             a.reject_gap_ms, m.get("verifier"), a.candidate_rule,
                                             clip_table_view_shifts(a.clip_table), int(offset_ms))
        else:
            m["thresholds"] = out["thresholds"]
        m["operating_point"] = {
            "stages": "cascade (first stage + verifier)" if a.head else "first stage",
            "budget_fa_per_h": a.budget, "validation_set": a.validation_set,
            "first_stage_variant": dec.get("variant", "int8"), "validation_recall": round(r["recall"], 4),
            "validation_fa_per_h": round(r["fa_per_h"], 3), "validation_hours": round(every.hours, 3),
            "validation_streams": len(files), "tolerance_ms": a.tolerance_ms,
            "held_out_half": [{"recall": round(fo["held"]["recall"], 4), "fa_per_h": round(fo["held"]["fa_per_h"], 3)}
                              for fo in out["folds"]],
            "command": "python -m kws_train.calibrate " + " ".join(_without(argv if argv is not None else sys.argv[1:],
                                                                              "--validation-set")),
        }
        a.write_manifest.write_text(json.dumps(m, indent=1, allow_nan=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
