"""Respellings of English words for festival voices of other languages (filled in by the
generalization work); English voices read the word as is."""


def respell_for(lang: str, word: str) -> str:
    if lang == "en":
        return word
    raise NotImplementedError(f"no respelling rules for {lang!r} yet")
