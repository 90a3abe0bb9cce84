"""Second-stage verifier (kws_train/verifier.py): view indexing, the cascade decoder, and (when the two
openWakeWord feature models are present in data/oww or $KWS_OWW_MODELS) their input/output contract.
numpy + onnxruntime only; torch parts are skipped without torch."""

import sys
from pathlib import Path

import numpy as np
import pytest

TRAINING = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TRAINING))

from kws_train import KEYWORDS  # noqa: E402
from kws_train.streameval import grid_events  # noqa: E402
from kws_train.verifier import (EMB_CENTRE_MS, EMB_DIM, EMB_MS, LONG, LONG_EMB, WINDOW_EMB,  # noqa: E402
                                cascade_events, find_feature_models, take_view, view_start)


def test_view_is_centred_on_the_event_time():
    for t in (400 + 80 * 20, 400 + 80 * 20 + 30, 5000):
        j0 = view_start(t)
        centre = EMB_CENTRE_MS + EMB_MS * (j0 + WINDOW_EMB // 2)
        assert abs(centre - t) <= EMB_MS // 2
    assert view_start(1000, offset_ms=160) == view_start(1000) + 2


def test_take_view_repeats_edges():
    emb = np.arange(5 * EMB_DIM, dtype=np.float32).reshape(5, EMB_DIM)
    v = take_view(emb, -3)
    assert v.shape == (WINDOW_EMB, EMB_DIM)
    assert np.array_equal(v[0], emb[0]) and np.array_equal(v[3], emb[0]) and np.array_equal(v[-1], emb[-1])
    assert np.array_equal(take_view(np.tile(emb, (3, 1)), 2), np.tile(emb, (3, 1))[2:2 + WINDOW_EMB])


def _trace(n, seed):
    rng = np.random.default_rng(seed)
    sm = rng.random((n, 12)).astype(np.float32) ** 8
    start = 20 * np.arange(n, dtype=np.int64)
    return sm, start, start + 1000


@pytest.mark.parametrize("seed", range(5))
def test_cascade_with_an_accepting_verifier_is_the_first_stage(seed):
    """A verifier that accepts everything leaves the shipped decoder's events unchanged."""
    sm, start, end = _trace(800, seed)
    times = (start + end) // 2
    for t1 in (0.3, 0.5, 0.9):
        want = grid_events(sm, start, end, [t1], 1000)[0]
        ev, n = cascade_events(sm, end, t1, lambda i: np.ones(12), 0.5, 1000, 200, relabel=False)
        assert [(k, int(times[i])) for k, i in ev] == want and n == len(want)


def test_cascade_rejection_only_blocks_the_reject_gap():
    sm = np.zeros((100, 12), np.float32)
    sm[10:60, 3] = 0.9  # one long burst of "down"
    start = 20 * np.arange(100, dtype=np.int64)
    end = start + 1000
    calls = []

    def verify(i):
        calls.append(i)
        p = np.zeros(12)
        p[3] = 1.0 if i >= 40 else 0.0  # rejects early candidates
        return p

    ev, n = cascade_events(sm, end, 0.5, verify, 0.5, 1000, 200, relabel=False)
    assert calls == [10, 20, 30, 40]  # 200-ms gap = 10 windows of 20 ms
    assert ev == [(3, 40)] and n == 4
    # relabel: the verifier's own best keyword becomes the label
    ev, _ = cascade_events(sm, end, 0.5, lambda i: np.eye(12)[7], 0.5, 1000, 200, relabel=True)
    assert ev == [(7, 10)]
    ev, _ = cascade_events(sm, end, 0.5, lambda i: np.eye(12)[7], 0.5, 1000, 200, relabel=False)
    assert ev == []  # the first stage's keyword (down) has probability 0


models = find_feature_models()


@pytest.mark.skipif(models is None, reason="openWakeWord feature models not unpacked (verifier unpack)")
def test_feature_model_contract():
    from kws_train.verifier import Embedder

    emb = Embedder(models)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(24000) * 0.1).astype(np.float32)
    spec = emb.mel(x)
    assert spec.shape == (147, 32)  # ceil(24000 / 160 - 3)
    e = emb.embed(x)
    assert e.shape == (WINDOW_EMB, EMB_DIM)  # 1.5 s -> 9 embeddings
    assert emb.embed((rng.standard_normal(LONG) * 0.1).astype(np.float32)).shape[0] >= LONG_EMB
    # batched mel equals per-window mel
    xb = np.stack([x, x[::-1].copy()])
    assert np.allclose(emb.mel(xb)[1], emb.mel(x[::-1].copy()), atol=1e-4)
    # a stream's embedding j equals the embedding of the window starting at mel frame 8 j (80 ms)
    y = (rng.standard_normal(48000) * 0.1).astype(np.float32)
    full = emb.embed(y)
    part = emb.embed(y[1280 * 3:1280 * 3 + 24000])
    assert np.allclose(full[3], part[0], atol=1e-3)


def test_head_shapes():
    torch = pytest.importorskip("torch")
    from kws_train.verifier import head_probs, make_head, random_views

    net = make_head(16, 0.0).eval()
    X = np.random.default_rng(0).standard_normal((4, LONG_EMB, EMB_DIM)).astype(np.float32)
    v = random_views(X, np.random.default_rng(1))
    assert v.shape == (4, WINDOW_EMB, EMB_DIM)
    p = head_probs(net, v)
    assert p.shape == (4, len(KEYWORDS) + 2) and np.allclose(p.sum(1), 1, atol=1e-5)
    assert torch is not None


def test_averaged_head_is_the_mean_of_its_members(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from kws_train.verifier import head_file_probs, head_probs, load_head, main, make_head

    views = np.random.default_rng(2).standard_normal((6, WINDOW_EMB, EMB_DIM)).astype(np.float32)
    members = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        net = make_head(16, 0.0, "conv").eval()
        torch.save({"state": net.state_dict(), "hidden": 16, "dropout": 0.0, "arch": "conv"}, tmp_path / f"{seed}.pt")
        members.append(head_probs(net, views))
    main(["average", "--heads", *(str(tmp_path / f"{s}.pt") for s in (1, 2, 3)), "--out", str(tmp_path / "avg")])
    mean = np.mean(members, axis=0)
    assert np.abs(members[0] - mean).max() > 1e-3  # the members differ, so the test can tell them apart
    np.testing.assert_allclose(head_file_probs(tmp_path / "avg" / "head.onnx", views), mean, atol=1e-6)
    np.testing.assert_allclose(head_probs(load_head(tmp_path / "avg" / "head.pt"), views), mean, atol=1e-5)
    with pytest.raises(SystemExit):  # an average of averages (or of one head) is refused
        main(["average", "--heads", str(tmp_path / "avg" / "head.pt"), str(tmp_path / "1.pt"), "--out", str(tmp_path / "x")])


def test_clip_range_matches_the_rust_fixture():
    """`verifier_golden.clip_range` (the Rust crate's `View::at(..).clip()`) against the committed
    table of tests/fixtures/verifier/clips.json, and its edge rules."""
    import json

    from kws_train.verifier_golden import clip_range, clip_samples

    assert clip_samples(WINDOW_EMB) == 22880
    assert clip_range(500) == (-3, 0, clip_samples(6), 3)  # first window of a stream
    j0, s, e, lead = clip_range(10_500)
    assert (j0, s, e - s, lead) == (view_start(10_500), 1280 * j0, 22880, 0)
    fixture = TRAINING.parent / "tests" / "fixtures" / "verifier" / "clips.json"
    for r in json.loads(fixture.read_text())["views"]:
        assert clip_range(r["t_ms"], r.get("offset_ms", 0)) == (r["first"], r["start"], r["end"], r["lead"])


@pytest.mark.skipif(models is None, reason="openWakeWord feature models not unpacked (verifier unpack)")
def test_mel_floor_is_relative_to_the_whole_input():
    """The mel model clamps at 80 dB below the maximum of its whole input, so a quiet stretch gives
    other values alone than next to loud audio (why the Rust verifier runs mel once per clip)."""
    from kws_train.verifier import Embedder

    emb = Embedder(models)
    rng = np.random.default_rng(0)
    quiet = (rng.standard_normal(16000) * 1e-4).astype(np.float32)
    loud = (rng.standard_normal(16000) * 0.5).astype(np.float32)
    alone = emb.mel(quiet)
    inside = emb.mel(np.concatenate([quiet, loud]))[: len(alone)]
    assert np.abs(alone - inside).max() > 1.0
    batched = emb.mel(np.stack([quiet, loud]))[0]
    assert np.abs(alone - batched).max() > 1.0


def test_clip_range_of_a_first_embedding_is_the_clip_range_of_its_time():
    from kws_train.verifier import clip_range_of
    from kws_train.verifier_golden import clip_range

    for t in list(range(0, 3000, 10)) + [59_500, 123_456]:
        want = clip_range(t)
        assert clip_range_of(want[0]) == want, t


def test_shipped_cascade_goldens_agree_with_their_manifests():
    """The cascade golden of each shipped model (`verifier_golden shipped`) was computed at the
    manifest's verifier section: same thresholds, and exactly the candidates whose verifier
    probability of the first stage's keyword reaches its threshold are events."""
    import json

    from kws_train.verifier_golden import clip_range

    models = Path(__file__).resolve().parents[2]
    checked = 0
    for mdir in (models / "tc-resnet8", models / "tc-resnet14-1.5", models / "tc-resnet8-stream"):
        m = json.loads((mdir / "manifest.json").read_text())
        if "verifier" not in m:
            continue
        c = json.loads((mdir / "golden" / "golden.json").read_text())["stream"]["cascade"]
        v = m["verifier"]
        assert c["first_stage_threshold"] == np.float32(v["first_stage_threshold"])
        assert c["thresholds"] == {k: float(np.float32(x)) for k, x in v["thresholds"].items()}
        assert c["candidate_rule"] == v.get("candidate_rule", "best_keyword")
        assert c.get("view_shifts", 0) == v.get("view_shifts", 0)
        shifts = v.get("view_shifts", 0)
        for x in c["candidates_fp32"]:  # each candidate's clip holds all its shifted views
            j0, s0, e0, lead = clip_range((x["start_ms"] + x["end_ms"]) // 2, v["centre_offset_ms"], shifts=shifts)
            assert (x["lead"], x["clip"][0]) == (lead, s0)
        for variant in ("fp32", "int8"):
            accepted = [(x["keyword"], x["start_ms"]) for x in c[f"candidates_{variant}"]
                        if x["probs"][KEYWORDS.index(x["keyword"])] >= np.float32(v["thresholds"][x["keyword"]])]
            assert accepted == [(e["keyword"], e["start_ms"]) for e in c[f"events_{variant}"]]
            assert all(x["candidate_score"] >= np.float32(v["first_stage_threshold"])
                       for x in c[f"candidates_{variant}"])
            if c["candidate_rule"] == "best_keyword":
                assert all(x["candidate_score"] == x["score"] for x in c[f"candidates_{variant}"])
            assert c[f"candidates_{variant}"], f"{mdir.name}: the golden stream proposes no candidate"
        checked += 1
    assert checked == 3


def test_keyword_mass_proposes_split_windows_and_checks_the_first_stage_keyword():
    """`keyword_mass` compares the keywords' summed smoothed scores with t1 (float64 in keyword order,
    rounded to float32); the candidate's keyword stays the highest one, and the verifier is asked
    about that keyword, not its own best."""
    from kws_train.verifier import candidate_scores, cascade_events

    sm = np.zeros((4, 12), np.float32)
    sm[0, [9, 1]] = [0.45, 0.40]  # go vs no: no keyword reaches 0.8, together they do
    sm[1, 11] = 1.0  # unknown
    sm[2, [6, 7]] = [0.3, 0.3]  # on/off, 0.6 in all
    sm[3, [0]] = [0.9]
    best, mass = candidate_scores(sm, "keyword_mass")
    assert best.tolist()[0] == 9 and mass.dtype == np.float32
    assert mass[0] == np.float32(np.float64(np.float32(0.45)) + np.float64(np.float32(0.40)))
    _, top = candidate_scores(sm, "best_keyword")
    assert top[0] == np.float32(0.45)
    end = np.array([1000, 3000, 5000, 7000])
    asked = []

    def verify(i):
        asked.append(i)
        p = np.zeros(12, np.float32)
        p[best[i]] = 0.9
        return p

    ev, n = cascade_events(sm, end, 0.8, verify, 0.5, 1000, 200, False, "keyword_mass")
    assert (ev, n, asked) == ([(9, 0), (0, 3)], 2, [0, 3])
    ev, n = cascade_events(sm, end, 0.8, verify, 0.5, 1000, 200, False, "best_keyword")
    assert (ev, n) == ([(0, 3)], 1)
    with pytest.raises(ValueError, match="unknown candidate rule"):
        candidate_scores(sm, "sum")


def test_acceptance_by_keyword_counts_the_first_stage_keyword_and_the_verifier_threshold():
    """`verifier clips`' per-keyword table: clips are grouped by the first stage's keyword (the highest
    of the ten, whatever the non-keyword classes say), split into right and wrong, and the verifier's
    probability of that keyword is compared with that keyword's own threshold (>=)."""
    from kws_train.verifier import acceptance_by_keyword

    n = len(KEYWORDS) + 2
    down, on, unknown = KEYWORDS.index("down"), KEYWORDS.index("on"), n - 1

    def onehot(i, p=0.9):
        v = np.full(n, (1 - p) / (n - 1), np.float32)
        v[i] = p
        return v

    # First stage: three clips say "down" (two are "down", one is "on"); one "on" clip says "on" even
    # though unknown is its highest class overall (keywords only, as a candidate is labelled).
    p1 = np.stack([onehot(down), onehot(down), onehot(down), onehot(unknown, 0.5)])
    p1[3, on] = 0.3
    y = np.array([down, down, on, on])
    p2 = np.zeros((4, n), np.float32)
    p2[:, down] = [0.8, 0.5, 0.79, 0.0]
    p2[:, on] = [0.0, 0.0, 0.0, 0.3]
    th = {k: 0.3 for k in KEYWORDS} | {"down": 0.8}
    r = acceptance_by_keyword(p1, p2, y, th)
    assert r["down"] == {"first_stage": 3, "right": 2, "wrong": 1, "accepted_right": 0.5, "accepted_wrong": 0.0}
    assert r["on"] == {"first_stage": 1, "right": 1, "wrong": 0, "accepted_right": 1.0, "accepted_wrong": None}
    assert r["yes"] == {"first_stage": 0, "right": 0, "wrong": 0, "accepted_right": None, "accepted_wrong": None}
    # Non-keyword labels are not keyword clips.
    assert acceptance_by_keyword(p1, p2, np.array([unknown] * 4), th)["down"]["first_stage"] == 0


def test_shifted_views_share_one_clip_and_combine_to_the_minimum():
    """`view_shifts` N: the clip of a candidate holds the 9 + 2N embeddings of its 2N + 1 views (the
    candidate's view in the middle), and the verdict is their per-class minimum (the Rust
    `verifier::combine_views`)."""
    from kws_train.verifier_golden import clip_range, clip_samples, combine_views, shifted_views

    for t in (500, 700, 10_500, 59_500):
        j0, s, e, lead = clip_range(t)
        j1, s1, e1, lead1 = clip_range(t, shifts=1)
        assert j1 == j0 - 1
        if lead == 0 and j0 > 0:
            assert (s1, e1 - s1, lead1) == (s - 1280, clip_samples(11), 0)
        else:  # at the start of a stream the shifted clip starts at 0 too, with one more lead
            assert (s1, lead1) == (0, min(lead + 1, 10))
    e = np.arange(11 * EMB_DIM, dtype=np.float32).reshape(11, EMB_DIM)
    v = shifted_views(e, 1)
    assert v.shape == (3, WINDOW_EMB, EMB_DIM)
    assert np.array_equal(v[1], e[1:10]) and np.array_equal(v[2], e[2:11])
    assert np.array_equal(shifted_views(e[:9], 0)[0], e[:9])
    p = np.array([[0.1, 0.8, 0.1], [0.3, 0.4, 0.3], [0.2, 0.7, np.nan]], np.float32)
    got = combine_views(p)
    assert got[:2].tolist() == [np.float32(0.1), np.float32(0.4)] and np.isnan(got[2])
