"""Free-text Body Part Examined normalisation (seed 004 §4.2.2.1).

The field is free text in practice: several languages, any case, accents or not, laterality
glued on, typos. :func:`normalise_body_part` folds the text, drops laterality and view words,
looks up a multilingual synonym table (longest phrase first, left to right), then falls back
to fuzzy matching (:func:`difflib.get_close_matches`) for misspellings.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from functools import lru_cache
from typing import Any

from ._body_part_terms import LATERALITY, NOISE, SYNONYMS

__all__ = ["CANONICAL_BODY_PARTS", "UNKNOWN", "body_part_of", "fold", "normalise_body_part"]

UNKNOWN = "UNKNOWN"
CANONICAL_BODY_PARTS: tuple[str, ...] = tuple(SYNONYMS)

#: difflib ratio needed for a fuzzy match: "wirst"~"wrist" 0.80, "hipp"~"hip" 0.86.
FUZZY_CUTOFF = 0.8
_MIN_FUZZY_WORD = 4
_MAX_NGRAM = 4
_NON_ALNUM = re.compile(r"[^0-9a-z]+")


def fold(text: str) -> str:
    """Case-fold, strip accents, turn every run of non-alphanumerics into one space."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    ascii_text = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _NON_ALNUM.sub(" ", ascii_text).strip()


@lru_cache(maxsize=1)
def _lookup() -> dict[str, str]:
    """Folded variant (spaced and joined forms) -> canonical term."""
    table: dict[str, str] = {}
    for canonical, variants in SYNONYMS.items():
        for variant in (canonical, *variants):
            folded = fold(variant)
            table.setdefault(folded, canonical)
            table.setdefault(folded.replace(" ", ""), canonical)
    return table


@lru_cache(maxsize=1)
def _fuzzy_keys() -> tuple[str, ...]:
    return tuple(sorted(k for k in _lookup() if len(k) >= 3))


def _strip_glued_laterality(word: str, table: dict[str, str]) -> str:
    """'wristrt' -> 'wrist', 'lwrist' -> 'wrist' when the rest is a known term."""
    if word in table:
        return word
    for lat in sorted(LATERALITY, key=len, reverse=True):
        if len(word) - len(lat) < 3:
            continue
        if word.endswith(lat) and word[: -len(lat)] in table:
            return word[: -len(lat)]
        if word.startswith(lat) and word[len(lat) :] in table:
            return word[len(lat) :]
    return word


def _exact(words: list[str], table: dict[str, str]) -> str | None:
    for n in range(min(_MAX_NGRAM, len(words)), 0, -1):
        for i in range(len(words) - n + 1):
            gram = words[i : i + n]
            for candidate in (" ".join(gram), "".join(gram)):
                if candidate in table:
                    return table[candidate]
    return None


def normalise_body_part(text: str | None) -> str:
    """Map free text to a canonical DICOM-like term ("WRIST", "HIP", ...) or "UNKNOWN".

    E.g. "Muñeca", "POIGNET", "Handgelenk", "wirst", "wrist rt" -> "WRIST";
    "HÜFTE", "cadera", "hip joint", "HIPP" -> "HIP"; "pelvis/hip" -> "PELVIS" (first
    term wins). Raises TypeError for a non-string.
    """
    if text is None:
        return UNKNOWN
    if not isinstance(text, str):
        raise TypeError(f"body part must be a str or None, got {type(text).__name__}")
    folded = fold(text)
    if not folded:
        return UNKNOWN
    table = _lookup()
    tokens = folded.split()
    for candidate in (folded, "".join(tokens)):  # "L-SPINE" before "L" is read as laterality
        if candidate in table:
            return table[candidate]
    words = [
        _strip_glued_laterality(w, table)
        for w in tokens
        if w not in LATERALITY and w not in NOISE and not w.isdigit()
    ]
    if not words:
        return UNKNOWN
    hit = _exact(words, table)
    if hit is not None:
        return hit
    keys = _fuzzy_keys()
    for word in (*words, "".join(words)):
        if len(word) < _MIN_FUZZY_WORD:
            continue
        close = difflib.get_close_matches(word, keys, n=1, cutoff=FUZZY_CUTOFF)
        if close:
            return table[close[0]]
    return UNKNOWN


def body_part_of(ds: Any) -> str:
    """The normalised body part of a DICOM dataset (or header), from the first attribute
    that names one: Body Part Examined, the Anatomic Region Sequence's code meaning, then
    the Series and Study Descriptions (seed 004 §4.2.2.1: the tag is often empty or free
    text). "UNKNOWN" when none does."""
    candidates: list[str] = [str(ds.get("BodyPartExamined", "") or "")]
    for item in ds.get("AnatomicRegionSequence", None) or []:
        candidates.append(str(item.get("CodeMeaning", "") or ""))
    candidates += [str(ds.get("SeriesDescription", "") or ""),
                   str(ds.get("StudyDescription", "") or "")]
    for text in candidates:
        part = normalise_body_part(text) if text.strip() else UNKNOWN
        if part != UNKNOWN:
            return part
    return UNKNOWN
