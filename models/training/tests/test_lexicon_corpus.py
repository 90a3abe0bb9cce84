"""Keyword homophones and near-words (lexicon), and how the evaluation corpus uses them.

No TTS engine needed except where marked (skipped when espeak-ng / fortune-mod are absent).
"""

import json
import random
import shutil
import sys
from pathlib import Path

import pytest

TRAINING = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TRAINING))

from kws_train import KEYWORDS  # noqa: E402
from kws_train import evalcorpus  # noqa: E402
from kws_train.lexicon import (HOMOPHONE_OF, keyword_of, keywords_in, near_keyword_of,  # noqa: E402
                               near_words_in)

HAS_ESPEAK = shutil.which("espeak-ng") is not None


@pytest.mark.parametrize("word,kw", [("know", "no"), ("Know", "no"), ("write", "right"), ("rite", "right"),
                                     ("Wright", "right"), ("right's", "right"), ("no", "no"), ("GO", "go"),
                                     ("stop", "stop"), ("'yes'", "yes")])
def test_keywords_and_homophones(word, kw):
    assert keyword_of(word, phonetic=False) == kw


@pytest.mark.parametrize("word", ["going", "often", "upon", "yesterday", "stopped", "knows", "downtown",
                                  "lefty", "countdown", "bright", "setup", "note", "ago", "written"])
def test_near_words_are_not_keywords(word):
    assert keyword_of(word, phonetic=False) is None
    assert near_keyword_of(word, phonetic=False) in KEYWORDS, word


@pytest.mark.parametrize("word", ["one", "not", "got", "nation", "person", "table", "guess", "eyes", "god",
                                  "ones", "none", "only", "group", "soup"])
def test_plain_words(word):
    assert keyword_of(word, phonetic=False) is None
    assert near_keyword_of(word, phonetic=False) is None


def test_sentence_helpers():
    s = "I know we're going downtown; no-one writes often."
    assert keywords_in(s, phonetic=False) == ["no", "no"]  # "know", and "no" of "no-one"
    assert near_words_in(s, phonetic=False) == ["going", "downtown", "writes", "often"]
    assert all(HOMOPHONE_OF[h] in KEYWORDS for h in HOMOPHONE_OF)


@pytest.mark.skipif(not HAS_ESPEAK, reason="espeak-ng not installed")
def test_phonetic_homophones_and_near_words():
    assert keyword_of("knowe") == "no"
    assert near_keyword_of("goal") == "go"  # G OW L starts with "go"
    assert near_keyword_of("nation") is None


def test_fortune_filter(tmp_path, monkeypatch):
    """Keywords and homophones never reach a stream; near-word sentences go to their own pool."""
    (tmp_path / "mini").write_text(
        "The cat sat on the mat today.\n%\nYou know the rules of this game.\n%\n"
        "Please write me a long letter soon.\n%\nWe were going home after dinner.\n%\n"
        "Three small birds sang in the garden.\n%\nA rite of passage for young people.\n%\n"
        "They often walked along the quiet river.\n%\nHis name was Wright and he was tall.\n",
        encoding="utf-8")
    (tmp_path / "mini.dat").write_text("ignored", encoding="utf-8")
    monkeypatch.setattr(evalcorpus, "FORTUNE_DIR", str(tmp_path))
    plain, near = evalcorpus.fortune_sentences(1, phonetic=False)
    assert sorted(plain) == ["Three small birds sang in the garden."]
    assert sorted(near) == ["They often walked along the quiet river.", "We were going home after dinner."]


def test_plan_categories():
    jobs = evalcorpus.plan_jobs(pos_minutes=1.0, neg_minutes=6.0, near_minutes=2.0)
    cats = [c for *_, c in jobs]
    assert cats.count("keywords") == 2 and cats.count("speech") == 4 and cats.count("music-noise") == 2
    assert cats.count("near-words") == 2
    # Near-word streams have their own indices (and seeds): the other streams do not move.
    assert [i for k, i, _, c in jobs if c == "near-words"] == [50_000, 50_001]
    assert evalcorpus.plan_jobs(1.0, 6.0, 0.0) == [j for j in jobs if j[3] != "near-words"]


def test_committed_slice_manifest_still_reads():
    """The committed slice predates the categories: its lines carry no `category` (kws-client reads
    `meta` as free-form, so old and new manifests both load)."""
    rows = [json.loads(x) for x in (TRAINING.parent / "eval-slice" / "manifest.jsonl").read_text().splitlines()]
    assert {r["negative"] for r in rows} == {True, False}


@pytest.mark.skipif(not (HAS_ESPEAK and Path(evalcorpus.FORTUNE_DIR).is_dir()),
                    reason="espeak-ng or fortune-mod not installed")
def test_real_fortunes_have_no_keyword_sounds():
    plain, near = evalcorpus.fortune_sentences(evalcorpus.SEED)
    assert len(plain) > 1000 and len(near) > 100
    for s in plain + near:
        assert not keywords_in(s), s
    for s in plain[:2000]:
        assert not near_words_in(s), s


def test_validation_set_is_split_from_the_evaluation_corpus():
    from kws_train import valcorpus

    assert valcorpus.VAL.seed != evalcorpus.EVAL.seed
    a, b = evalcorpus.EVAL.bg_span, valcorpus.VAL.bg_span
    assert a[1] <= b[0] or b[1] <= a[0], "background segments overlap"
    variants = ["m1", "f2", "klatt"]
    rng = random.Random(0)
    val = [valcorpus.val_voice(rng, variants) for _ in range(300)]
    ev = [evalcorpus.stream_voice(rng, variants) for _ in range(300)]
    assert {v["engine"] for v in val} & {v["engine"] for v in ev} == {"espeak"}
    assert all(v["voice"].split("+")[0] in valcorpus.VAL_ACCENTS for v in val if v["engine"] == "espeak")
    assert "flite-awb" not in {v["engine"] for v in val}
    assert {v["engine"] for v in val} >= {"gnuspeech", "festival-cs-ph", "espeak"}
