"""Golden vectors of the Rust verifier and cascade (`kws_models::verifier`, `kws_models::cascade`;
tests `models/tests/verifier.rs` and `models/tests/cascade.rs`).

Writes into --out (default ../tests/fixtures/verifier):
- `clips/*.wav` + `clips.json`: real clips cut from validation streams the way the Rust crate cuts a
  candidate's clip (`clip_range`), with the head input (9 x 96 embeddings) and the head's 12
  probabilities computed here with onnxruntime (mel once per clip, as the Rust verifier does: the mel
  model's 80-dB floor is relative to the maximum of its whole input); plus a table of candidate
  times -> view / clip range from `verifier.view_start`.
- `cascade.json`: two validation streams' smoothed first-stage keyword scores (values >= 0.01 kept,
  the others written as 0; every grid t1 is >= 0.3), window times (regular: first start, hop, length), the head's probabilities for every
  window that can be a candidate (stream embeddings, as `verifier cascade` computes them), and the
  events `verifier.cascade_events` gives over a grid of (t1, v).

  python -m kws_train.verifier_golden --cache runs13/val-cache --valcorpus data/valcorpus \\
      --head ../tests/fixtures/verifier/head-research-conv15k.onnx

- `shipped --model-dir ../tc-resnet8`: the cascade of a shipped model's manifest on its golden stream,
  written into its `golden/golden.json` (`stream.cascade`; see `shipped_cascade_golden`).
"""

from __future__ import annotations

import argparse
import json
import sys
import wave
from pathlib import Path

import numpy as np

from . import KEYWORDS, SAMPLE_RATE
from .streameval import read_wav
from .verifier import (EMB_STEP, WINDOW_EMB, Embedder, candidate_scores, cascade_events, find_feature_models, take_view,
                       view_start)

MEL_HOP, MEL_FRAME, EMB_FRAMES = 160, 512, 76
SPARSE_MIN = 0.01
T1_GRID = [0.3, 0.5, 0.7, 0.9]
V_GRID = [0.3, 0.5, 0.7, 0.9, 0.99]
CASCADE_STREAMS = ["pos_00015", "neg_00039"]  # the most varied events over the grid


def clip_samples(n_emb: int) -> int:
    return (EMB_FRAMES + EMB_STEP * (n_emb - 1) + 3) * MEL_HOP


def clip_range(t_ms: int, offset_ms: int = 0, n: int = WINDOW_EMB, shifts: int = 0) -> tuple[int, int, int, int]:
    """(first embedding, start sample, end sample, lead) of a candidate at t_ms: the Rust crate's
    `View::at(..).clip()`. For a view starting before embedding 0 the clip starts at 0 and is `lead`
    embeddings shorter; the first embedding is repeated `lead` times (as `take_view` does). With
    `shifts` the clip holds the `n + 2 * shifts` embeddings of all the shifted views (`view_probs`)."""
    from .verifier import clip_range_of

    return clip_range_of(view_start(t_ms, offset_ms) - shifts, n + 2 * shifts)


def clip_view(emb: Embedder, audio: np.ndarray, lead: int, n: int = WINDOW_EMB) -> np.ndarray:
    """Head input of one clip: mel of this clip alone, its embeddings, edges repeated."""
    e = emb.embed_mel(emb.mel(audio))[: n - lead]
    idx = np.clip(np.arange(n) - lead, 0, len(e) - 1)
    return e[idx]


def shifted_views(e: np.ndarray, shifts: int, n: int = WINDOW_EMB) -> np.ndarray:
    """The `2 * shifts + 1` head inputs of one clip's `n + 2 * shifts` embeddings (`clip_view`): views of
    `n` embeddings starting 0, 1, ... embeddings (80 ms) apart; the middle one is the candidate's view."""
    return np.stack([e[s:s + n] for s in range(2 * shifts + 1)]).astype(np.float32)


def combine_views(p: np.ndarray) -> np.ndarray:
    """The verdict's probabilities from the head's probabilities of a clip's shifted views
    `[(clips,) views, 12]`: per class the minimum (a keyword must be heard in every view), as the Rust
    verifier does (`verifier.view_shifts` in the manifest)."""
    return p.min(axis=-2)


def view_probs(emb: Embedder, head, audio: np.ndarray, lead: int, shifts: int = 0, n: int = WINDOW_EMB) -> np.ndarray:
    """Verifier probabilities of one candidate clip (`clip_range(.., shifts=shifts)`): mel of the clip
    alone, the head on each shifted view, combined (`combine_views`)."""
    e = clip_view(emb, audio, lead, n + 2 * shifts)
    return combine_views(head.run(None, {"embeddings": shifted_views(e, shifts, n)})[0])


def f32(x) -> list | float:
    """float32 values as the float64 numbers they are (exact in JSON)."""
    a = np.asarray(x, np.float32)
    return a.astype(np.float64).tolist()


def write_wav(path: Path, x: np.ndarray) -> None:
    pcm = np.round(np.asarray(x) * 32768.0).astype("<i2")
    assert np.array_equal(pcm.astype(np.float32) / 32768.0, x), "clip is not exact int16"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.tobytes())


def make_clips(a, emb: Embedder, head) -> None:
    cache, root = a.cache, a.valcorpus
    # (stream, kind, t_ms or rule): true candidates, false candidates, stream start and end, and the
    # stream whose clips differ most from its stream-computed embeddings (the mel floor binds).
    picks = []
    z = np.load(cache / "pos_00006.npz")
    times = (z["start"] + z["end"]) // 2
    ev, _ = cascade_events(z["sm"], z["end"], 0.5, lambda i: np.ones(12), 0.5, 1000, 200, False)
    for k, i in ev[:4]:
        picks.append(("pos_00006", f"first-stage event {KEYWORDS[k]}", int(times[i])))
    z = np.load(cache / "near_50003.npz")
    times = (z["start"] + z["end"]) // 2
    ev, _ = cascade_events(z["sm"], z["end"], 0.5, lambda i: np.ones(12), 0.5, 1000, 200, False)
    for k, i in ev[:2]:
        picks.append(("near_50003", f"near-word false alarm {KEYWORDS[k]}", int(times[i])))
    picks.append(("pos_00003", "first window of a stream (view starts at embedding -3)", 500))
    picks.append(("pos_00003", "window at t 660 ms (lead 1)", 660))
    z = np.load(cache / "pos_00003.npz")
    picks.append(("pos_00003", "last window of a stream (clip cut by the stream end)",
                  int((z["start"][-1] + z["end"][-1]) // 2)))
    z = np.load(cache / "near_50004.npz")
    x = read_wav(root / str(z["wav"]))
    diffs = []
    for t in range(1500, int(z["end"][-1]) - 1000, 2000):  # the clip whose embeddings differ most
        j0, s, e, lead = clip_range(t)
        diffs.append((float(np.abs(clip_view(emb, x[s:e], lead) - take_view(z["emb"], j0)).max()), t))
    picks.append(("near_50004", "quiet stream: the mel floor binds (clip != stream embeddings)", max(diffs)[1]))
    out = a.out / "clips"
    out.mkdir(parents=True, exist_ok=True)
    rows, views, audio = [], [], []
    for n, (stream, kind, t) in enumerate(picks):
        z = np.load(cache / f"{stream}.npz")
        x = read_wav(root / str(z["wav"]))
        j0, s, e, lead = clip_range(t)
        clip = x[s:e]
        name = f"{n:02d}-{stream}-{t}.wav"
        write_wav(out / name, clip)
        v = clip_view(emb, clip, lead)
        views.append(v)
        audio.append((clip, lead))
        stream_view = take_view(z["emb"], j0)
        rows.append({"wav": f"clips/{name}", "what": kind, "stream": str(z["wav"]), "t_ms": t, "first": j0,
                     "start": s, "end": e, "lead": lead, "samples": len(clip),
                     "max_abs_diff_vs_stream_embeddings": float(np.abs(v - stream_view).max())})
    probs = head.run(None, {"embeddings": np.stack(views).astype(np.float32)})[0]
    for r, v, p in zip(rows, views, probs):
        r["embeddings"] = f32(v.reshape(-1))
        r["probs"] = f32(p)
    # Candidate times -> views / clip ranges, including negative views and halves (round to even).
    table = []
    for t in list(range(500, 1200, 10)) + [1000 + 20 * i for i in range(0, 200, 7)] + [59_500, 123_456]:
        j0, s, e, lead = clip_range(t)
        table.append({"t_ms": t, "first": j0, "start": s, "end": e, "lead": lead})
    for off in (-160, 150, 250):
        j0, s, e, lead = clip_range(5000, off)
        table.append({"t_ms": 5000, "offset_ms": off, "first": j0, "start": s, "end": e, "lead": lead})
    (a.out / "clips.json").write_text(json.dumps({
        "about": "kws_train.verifier_golden: clips of validation streams, head input and probabilities "
                 "(onnxruntime, mel once per clip); views: candidate time -> view and clip range",
        "head": a.head.name, "clips": rows, "views": table}, indent=1))
    for r in rows:
        print(f"{r['wav']}: {r['what']}; |clip - stream embeddings| {r['max_abs_diff_vs_stream_embeddings']:.3g}")


def make_cascade(a, emb: Embedder, head) -> None:
    files = []
    for stream in CASCADE_STREAMS:
        z = np.load(a.cache / f"{stream}.npz")
        sm = z["sm"].astype(np.float32).copy()
        kw = sm[:, : len(KEYWORDS)]
        kw[kw < SPARSE_MIN] = 0.0
        sm[:, len(KEYWORDS):] = 0.0
        start, end = z["start"].astype(np.int64), z["end"].astype(np.int64)
        times = (start + end) // 2
        best = kw.max(1)
        cand = np.nonzero(best >= np.float32(min(T1_GRID)))[0]
        vp = head.run(None, {"embeddings": np.stack([take_view(z["emb"], view_start(int(times[i]))) for i in cand])
                             .astype(np.float32)})[0] if len(cand) else np.zeros((0, 12), np.float32)
        probs = {int(i): p for i, p in zip(cand, vp)}
        grid = []
        for t1 in T1_GRID:
            for v in V_GRID:
                ev, nc = cascade_events(sm, end, t1, lambda i: probs[i], v, a.refractory_ms, a.reject_gap_ms, False)
                grid.append({"t1": t1, "v": v, "candidates": nc, "events": [[int(k), int(i)] for k, i in ev]})
        rows = [[int(i)] + [[int(k), float(kw[i, k])] for k in np.nonzero(kw[i])[0]] for i in np.nonzero(kw.max(1) > 0)[0]]
        hop, length = int(start[1] - start[0]), int(end[0] - start[0])
        assert np.array_equal(start, start[0] + hop * np.arange(len(sm))) and np.all(end - start == length)
        files.append({"stream": str(z["wav"]), "category": str(z["category"]), "windows": len(sm),
                      "first_start_ms": int(start[0]), "hop_ms": hop, "window_ms": length,
                      "scores": rows, "verifier": {str(i): f32(p) for i, p in probs.items()}, "grid": grid})
        print(stream, len(sm), "windows;", len(cand), "verifier calls;",
              [(g["t1"], g["v"], len(g["events"])) for g in grid])
    (a.out / "cascade.json").write_text(json.dumps({
        "about": "kws_train.verifier_golden: verifier.cascade_events on real validation streams; scores: "
                 f"[window, [keyword, smoothed score] for scores >= {SPARSE_MIN}] (others 0); verifier: window "
                 "-> head probabilities (stream embeddings); events: [keyword, window]",
        "keywords": KEYWORDS, "refractory_ms": a.refractory_ms, "reject_gap_ms": a.reject_gap_ms,
        "files": files}, separators=(",", ":")))


def shipped_cascade_golden(model_dir: Path, features: Path) -> dict:
    """The cascade on a shipped model's golden stream (`golden/stream.wav`), written into its
    `golden.json` as `stream.cascade`: for the fp32 and int8 first stages (the traces already in the
    golden), every candidate with the verifier's 12 probabilities on its own clip, and the events.
    `min_verifier_margin` is the smallest |p - v| of a candidate (a verdict that close to its threshold
    could flip between CPUs). Checked by `models/tests/golden.rs`."""
    import onnxruntime as ort

    from .calibrate import cascade_decode
    from .stream import DecoderConfig, smoothing_windows
    from .streameval import smoothed_fast

    m = json.loads((model_dir / "manifest.json").read_text())
    v = m["verifier"]
    gpath = model_dir / "golden" / "golden.json"
    g = json.loads(gpath.read_text())
    st = g["stream"]
    x = read_wav(model_dir / "golden" / st["wav"])
    emb = Embedder(features, 1)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    head = ort.InferenceSession(str(model_dir / v["head"]["path"]), so, providers=["CPUExecutionProvider"])
    thresholds = np.array([v["thresholds"][k] for k in KEYWORDS], np.float32)
    t1 = np.float32(v["first_stage_threshold"])
    rule = v.get("candidate_rule", "best_keyword")
    dec = DecoderConfig(smoothing_ms=st["decoder"]["smoothing_ms"], refractory_ms=st["decoder"]["refractory_ms"],
                        hop_frames=st["hop_frames"])
    shifts = v.get("view_shifts", 0)
    out = {"candidate_rule": rule, "first_stage_threshold": float(t1), "thresholds": dict(zip(KEYWORDS, f32(thresholds))),
           "reject_gap_ms": v["reject_gap_ms"], "embeddings_per_view": v["embeddings_per_view"],
           "view_shifts": shifts}
    margins = []
    for variant in ("fp32", "int8"):
        trace = st[f"trace_{variant}"]
        probs = np.array([w["probs"] for w in trace], np.float32)
        start = np.array([w["start_ms"] for w in trace], np.int64)
        end = np.array([w["end_ms"] for w in trace], np.int64)
        sm = smoothed_fast(probs, smoothing_windows(dec))
        _, cscore = candidate_scores(sm, rule)
        cands = []

        def verify(i):
            j0, s0, e0, lead = clip_range(int((start[i] + end[i]) // 2), v["centre_offset_ms"], shifts=shifts)
            p = view_probs(emb, head, x[s0:e0], lead, shifts)
            k = int(np.argmax(sm[i, :len(KEYWORDS)]))
            margins.append(abs(float(p[k]) - float(thresholds[k])))
            cands.append({"keyword": KEYWORDS[k], "score": f32(sm[i, k]), "candidate_score": f32(cscore[i]),
                          "start_ms": int(start[i]),
                          "end_ms": int(end[i]), "clip": [s0, min(e0, len(x))], "lead": lead, "probs": f32(p)})
            return p

        accepted = set(cascade_decode(sm, start, end, thresholds, dec.refractory_ms, float(t1), verify,
                                      v["reject_gap_ms"], rule))
        events = [{"keyword": c["keyword"], "score": c["score"], "verifier_score": c["probs"][KEYWORDS.index(c["keyword"])],
                   "start_ms": c["start_ms"], "end_ms": c["end_ms"]} for c in cands
                  if (KEYWORDS.index(c["keyword"]), (c["start_ms"] + c["end_ms"]) // 2) in accepted]
        out[f"candidates_{variant}"] = cands
        out[f"events_{variant}"] = events
    out["min_verifier_margin"] = round(min(margins), 4) if margins else None
    st["cascade"] = out
    gpath.write_text(json.dumps(g), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> None:
    import onnxruntime as ort

    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "shipped":
        argv = sys.argv[1:]
    if argv and argv[0] == "shipped":
        q = argparse.ArgumentParser(prog="verifier_golden shipped")
        q.add_argument("--model-dir", type=Path, required=True)
        q.add_argument("--features", type=Path, default=Path(__file__).resolve().parents[2] / "speech-embedding")
        b = q.parse_args(argv[1:])
        out = shipped_cascade_golden(b.model_dir, b.features)
        print(json.dumps({k: out[k] for k in ("events_fp32", "events_int8", "min_verifier_margin")}))
        return

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, required=True, help="`verifier embed` cache of the validation set")
    p.add_argument("--valcorpus", type=Path, default=Path("data/valcorpus"))
    p.add_argument("--head", type=Path, required=True)
    p.add_argument("--features", type=Path, default=Path(__file__).resolve().parents[2] / "speech-embedding")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "verifier")
    p.add_argument("--refractory-ms", type=int, default=1000)
    p.add_argument("--reject-gap-ms", type=int, default=200)
    a = p.parse_args(argv)
    emb = Embedder(find_feature_models(a.features), 1)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    head = ort.InferenceSession(str(a.head), so, providers=["CPUExecutionProvider"])
    a.out.mkdir(parents=True, exist_ok=True)
    make_clips(a, emb, head)
    make_cascade(a, emb, head)


if __name__ == "__main__":
    main()
