"""TS-Rec semantic extraction (section 4.1, Eq. 7): what the items sharing a SID token have in common.

One request per SID token, keyed by the token string (``"<a_12>"``): the prompt lists a random
sample of the token's cluster (:mod:`semrec.tokenizers.clusters`) with each item's title,
description, brand and categories, and asks for a description of the shared traits plus
10-20 keywords. The default template is the paper's appendix A.1 prompt followed by an
output-format section, so answers can be parsed by :func:`parse_token_semantics`.

SA-Init (:mod:`semrec.models.semantic_init`) uses the keywords, the TS-Align tasks
(:mod:`semrec.tasks.token_alignment`) the description.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from semrec.annotate.errors import AnnotationError
from semrec.data.dataset import RecDataset
from semrec.tasks.item_fields import field_text

KIND = "token_semantics"

ITEM_FIELDS = (("Title", "title"), ("Description", "description"), ("Brand", "brand"))
CATEGORY_FIELDS = ("categories", "category", "genres")

OUTPUT_FORMAT = (
    "Output format (exactly two lines):\n"
    "Description: <the one-paragraph product family description>\n"
    "Keywords: <keyword>, <keyword>, ... (10-20 keywords separated by commas)"
)

# TS-Rec appendix A.1, with {category} the item domain and {items} the sampled items.
DEFAULT_TEMPLATE = (
    "Role:\nYou are a Senior Product Content Analyst and Catalog Specialist with expertise in "
    "{category} product classification and summarization.\n\n"
    "Task: Analyze a provided list of diverse product items and synthesize their shared "
    'characteristics into a single, cohesive "Product Family Description," then produce a '
    "related keyword list.\n\n"
    "Input Format: Each item provides:\n"
    "- Title: product name\n"
    "- Description: detailed text about features, functions, and specifications\n"
    "- Brand: brand name\n"
    "- Categories: classification field(s)\n\n"
    "Core Objective:\n"
    "- Identify Commonalities: Determine the underlying functional, design, usage, or "
    "performance traits that ALL listed items share.\n"
    "- Filter Fluff: Exclude brand-specific marketing slogans, proprietary technology names, "
    'or promotional phrases (e.g., "award-winning," "exclusive edition").\n'
    "- Abstract Specifications: Replace exact measurements, quantities, or configurations "
    'with generalized terms (e.g., "various sizes," "multiple capacity options," "bulk '
    'packaging").\n'
    "- Synthesize: Produce a high-level overview that describes the product family as a "
    "category, rather than a list of individual items.\n"
    "- Extract Keywords: Identify 10-20 domain-relevant, semantically meaningful keywords "
    "derived from the description.\n\n"
    "Style & Tone:\n"
    "- Professional, neutral, and domain-agnostic.\n"
    "- Objective third-person, suitable for product catalogs and technical documentation.\n"
    "- One paragraph of 3-5 sentences that flows naturally.\n"
    "- Clear, concise, and focused on function, durability, applicability, or end-user "
    "benefits.\n\n"
    "Constraints:\n"
    "- No brand names in the output.\n"
    "- No bullet points; provide a cohesive, continuous paragraph.\n"
    "- Ensure the description is broad enough to encompass all items in the list but "
    "specific enough to convey meaningful shared traits.\n"
    "- Avoid overly promotional adjectives; emphasize factual, verifiable characteristics.\n\n"
    f"{OUTPUT_FORMAT}\n\n"
    "Input:\n\nItems:\n{items}"
)

PLACEHOLDERS = ("category", "items")
MAX_KEYWORD_WORDS = 6


@dataclass(frozen=True)
class TokenSemantics:
    """What one SID token stands for: a description ``D_s`` and keywords ``W_s``."""

    description: str
    keywords: tuple[str, ...]


class SemanticsParseError(ValueError):
    """An extractor answer that holds no usable description and keyword list."""


def category_text(ds: RecDataset, item: int) -> str:
    """The item's categories from the first of ``CATEGORY_FIELDS`` it has, ``""`` if none."""
    return next((t for f in CATEGORY_FIELDS if (t := field_text(ds, item, f))), "")


def item_block(ds: RecDataset, item: int, max_chars: int) -> str:
    """One item of the prompt: ``Title: ...; Description: ...; Brand: ...; Categories: ...``.

    Fields the item lacks are left out; the description is cut to ``max_chars`` characters.
    """
    parts = []
    for label, field in ITEM_FIELDS:
        text = field_text(ds, item, field)
        if field == "description" and len(text) > max_chars:
            text = text[:max_chars].rstrip() + " ..."
        if text:
            parts.append(f"{label}: {text}")
    categories = category_text(ds, item)
    if categories:
        parts.append(f"Categories: {categories}")
    year = field_text(ds, item, "year")
    if year:
        parts.append(f"Year: {year}")
    return "; ".join(parts) or f"item {ds.item_ids[item]} (no text)"


def token_semantics_requests(
    dataset: RecDataset,
    clusters: dict[str, list[int]],
    template: str | None = None,
    *,
    category: str = "general",
    max_description_chars: int = 300,
) -> dict[str, str]:
    """SID token -> extraction prompt listing the items of its (sampled) cluster.

    ``clusters`` comes from :func:`~semrec.tokenizers.clusters.token_clusters`, usually cut
    down by :func:`~semrec.tokenizers.clusters.sample_clusters`.
    """
    template = DEFAULT_TEMPLATE if template is None else template
    check_template(template)
    requests = {}
    for token, items in clusters.items():
        unknown = [item for item in items if not 0 <= item < dataset.num_items]
        if unknown:
            raise AnnotationError(
                f"token_semantics: the cluster of {token!r} holds item indices {unknown[:5]} "
                f"outside dataset {dataset.name!r} ({dataset.num_items} items); the tokenizer "
                "was fitted on other items"
            )
        lines = "\n".join(
            f"{n}. {item_block(dataset, item, max_description_chars)}"
            for n, item in enumerate(items, start=1)
        )
        requests[token] = template.format(category=category, items=lines)
    return requests


def check_template(template: str) -> None:
    """Raise :class:`AnnotationError` unless ``template`` uses ``{items}`` (and optionally
    ``{category}``) and no other placeholder."""
    import string

    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:
        raise AnnotationError(f"token_semantics template is not a format string: {err}") from None
    unknown = sorted(fields - set(PLACEHOLDERS))
    if unknown:
        raise AnnotationError(
            f"token_semantics template uses unknown placeholder(s) {unknown}; it may use only "
            "{category} and {items}"
        )
    if "items" not in fields:
        raise AnnotationError("token_semantics template must contain {items}")


# ---------------------------------------------------------------------- parsing

_LABEL = r"^[\s#>*_]*{name}[\s*_]*(?:\([^)]*\))?[\s*_]*[:：][\s*_]*"
_KEYWORDS_LABEL = re.compile(_LABEL.format(name=r"(?:key\s*words?|keyword list)"), re.I | re.M)
_DESCRIPTION_LABEL = re.compile(
    _LABEL.format(name=r"(?:(?:product\s+family\s+)?description|summary)"), re.I | re.M
)
_LIST_MARKER = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")


def parse_token_semantics(text: str, min_keywords: int = 5) -> TokenSemantics:
    """Read ``Description: ...`` / ``Keywords: a, b, ...`` (or a JSON object with those keys).

    Labels may carry markdown (``**Keywords:**``); keywords may be separated by commas,
    semicolons or one per line (bulleted or numbered). Keywords are de-duplicated ignoring
    case; entries longer than six words are dropped as sentences, not keywords. Raises
    :class:`SemanticsParseError` saying what is missing.
    """
    parsed = _parse_json(text)
    if parsed is None:
        parsed = _parse_labelled(text)
    description, raw_keywords = parsed
    description = " ".join(description.split())
    keywords = _clean_keywords(raw_keywords)
    if not description:
        raise SemanticsParseError("the answer has no description")
    if len(keywords) < min_keywords:
        raise SemanticsParseError(
            f"the answer has {len(keywords)} keyword(s), fewer than the {min_keywords} required"
        )
    return TokenSemantics(description, tuple(keywords))


def _parse_json(text: str) -> tuple[str, list[str]] | None:
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        obj = json.loads(text[start : end + 1])
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    lowered = {str(k).lower(): v for k, v in obj.items()}
    description = lowered.get("description", "")
    keywords = lowered.get("keywords", [])
    if isinstance(keywords, str):
        keywords = re.split(r"[,;\n]", keywords)
    if not isinstance(description, str) or not isinstance(keywords, list):
        return None
    return description, [str(k) for k in keywords]


def _parse_labelled(text: str) -> tuple[str, list[str]]:
    match = _KEYWORDS_LABEL.search(text)
    if match is None:
        raise SemanticsParseError("the answer has no 'Keywords:' line")
    head, tail = text[: match.start()], text[match.end() :]
    # the keyword list ends at the first blank line after it has started
    tail = re.split(r"\n\s*\n", tail.strip(), maxsplit=1)[0]
    description_match = _DESCRIPTION_LABEL.search(head)
    description = head[description_match.end() :] if description_match else head
    items = []
    for line in tail.splitlines():
        items.extend(re.split(r"[,;]", _LIST_MARKER.sub("", line)))
    return description, items


def _clean_keywords(raw: list[str]) -> list[str]:
    keywords: dict[str, str] = {}
    for entry in raw:
        word = " ".join(entry.strip().strip("\"'`*_.").split())
        if word and len(word.split()) <= MAX_KEYWORD_WORDS:
            keywords.setdefault(word.lower(), word)
    return list(keywords.values())


def retry_prompt(prompt: str, error: str) -> str:
    """The prompt re-sent after an unparseable answer: the original plus what went wrong."""
    return (
        f"{prompt}\n\nA previous answer to this request could not be used ({error}). Answer "
        f"again and follow the output format exactly.\n{OUTPUT_FORMAT}"
    )


def semantics_table(
    texts: dict[str, str], min_keywords: int = 5
) -> tuple[dict[str, TokenSemantics], dict[str, str]]:
    """Parse cached extractor answers: (token -> semantics, token -> why it was unusable)."""
    parsed, failed = {}, {}
    for token, text in texts.items():
        try:
            parsed[token] = parse_token_semantics(text, min_keywords)
        except SemanticsParseError as err:
            failed[token] = str(err)
    return parsed, failed
