"""``field_statistics``: token semantics counted from item fields, with no LLM.

TS-Rec asks an extractor LLM (DeepSeek in the paper) what the items sharing a SID token have
in common. When no capable LLM is at hand, this extractor writes the same kind of answer from
the structured fields of the token's items: the categories most of them share, the decades
they come from, brands, and words that recur in their titles. It is an offline stand-in,
not the paper's method; the embedded SmolLM2-135M could not follow the appendix A.1 prompt
(every answer lacked a keyword list when tried on ml-100k).

Its answers use the ``Description: ... / Keywords: ...`` format that
:func:`~semrec.annotate.token_semantics.parse_token_semantics` reads, so everything
downstream treats them like LLM answers.
"""

from __future__ import annotations

import re
from collections import Counter

from semrec.annotate.annotators import ANNOTATORS
from semrec.annotate.errors import AnnotationError
from semrec.annotate.token_semantics import category_text
from semrec.data.dataset import RecDataset, field_text

STOPWORDS = frozenset(
    "a an and the of in on at to for with from by or is it its this that as be are was "
    "de la le les el los das der die und ii iii part".split()
)


@ANNOTATORS.register("field_statistics")
class FieldStatisticsExtractor:
    """Describes a cluster of items by the field values they share (see the module docstring).

    Args:
        category: what the items are, used in the description ("movie", "product").
        max_keywords: cap on the keyword list (the paper asks for 10-20).
        min_share: a category, decade or brand is named only when at least this fraction of
            the cluster has it (the most common one is always named).
        examples: how many item titles the description quotes.
        titles: use the items' titles at all (example titles, recurring title words,
            title-word keywords); ``False`` describes a cluster by its other fields only, so
            no item name reaches SA-Init or TS-Align.
    """

    kinds = ("token_semantics",)

    def __init__(
        self,
        *,
        category: str = "item",
        max_keywords: int = 20,
        min_share: float = 0.25,
        examples: int = 3,
        titles: bool = True,
    ) -> None:
        if max_keywords < 1:
            raise AnnotationError(
                f"field_statistics: max_keywords must be >= 1, got {max_keywords}"
            )
        if not 0 < min_share <= 1:
            raise AnnotationError(f"field_statistics: min_share must be in (0, 1], got {min_share}")
        self.category = category
        self.max_keywords = max_keywords
        self.min_share = min_share
        self.examples = examples
        self.titles = titles

    def summarize(self, dataset: RecDataset, clusters: dict[str, list[int]]) -> dict[str, str]:
        """Token -> ``"Description: ...\\nKeywords: ..."`` for each cluster of item indices."""
        return {token: self.describe(dataset, items) for token, items in clusters.items()}

    def describe(self, dataset: RecDataset, items: list[int]) -> str:
        """The answer for one cluster."""
        if not items:
            raise AnnotationError("field_statistics: cannot describe an empty cluster")
        n = len(items)
        categories = self._shared(
            [c for item in items for c in _split_list(category_text(dataset, item))], n
        )
        decades = self._shared([d for item in items if (d := _decade(dataset, item))], n)
        brands = self._shared([b for item in items if (b := field_text(dataset, item, "brand"))], n)
        titles = [t for item in items if self.titles and (t := field_text(dataset, item, "title"))]
        title_counts = _title_words(titles).most_common()
        title_words = [w for w, c in title_counts if c >= 2]

        sentences = [f"A group of {n} {self.category}{'s' if n != 1 else ''}"]
        if categories:
            noun = "categories" if len(categories) > 1 else "category"
            sentences[0] += f" mostly in the {noun} " + _join(categories)
        if decades:
            sentences[0] += " from the " + _join(decades)
        sentences[0] += "."
        if brands:
            sentences.append("Common brands: " + _join(brands) + ".")
        if title_words:
            sentences.append("Recurring title words: " + _join(title_words[:5]) + ".")
        if titles:
            shown = ", ".join(titles[: self.examples])
            sentences.append(f"Examples: {shown}.")
        keywords = list(dict.fromkeys([*categories, *decades, *brands, *title_words]))
        if len(keywords) < self.max_keywords:  # fill with words of the example titles
            keywords += [w for w, _ in title_counts if w not in keywords]
        keywords = keywords[: self.max_keywords]
        return f"Description: {' '.join(sentences)}\nKeywords: {', '.join(keywords)}"

    def _shared(self, values: list[str], n: int) -> list[str]:
        counts = Counter(values).most_common()
        if not counts:
            return []
        return [value for value, c in counts if c / n >= self.min_share] or [counts[0][0]]


def _split_list(text: str) -> list[str]:
    return [part.strip() for part in re.split(r"[,;|]", text) if part.strip()]


def _decade(ds: RecDataset, item: int) -> str:
    match = re.search(r"\b(1[89]|20)\d{2}\b", field_text(ds, item, "year"))
    return f"{match.group(0)[:3]}0s" if match else ""


def _title_words(titles: list[str]) -> Counter:
    words: Counter = Counter()
    for title in titles:
        seen = {w.lower() for w in re.findall(r"[A-Za-z][A-Za-z'-]+", title)}
        words.update(w for w in seen if w not in STOPWORDS and len(w) > 2)
    return words


def _join(values: list[str]) -> str:
    if len(values) <= 2:
        return " and ".join(values)
    return ", ".join(values[:-1]) + " and " + values[-1]
