"""The ``annotate`` stage: texts written by an LLM for tasks and embedding init.

Kinds: user ``intention`` and ``preference`` (LC-Rec, III-C3) and ``token_semantics``, what
the items sharing a SID token have in common (TS-Rec, section 4.1).

- :mod:`~semrec.annotate.requests` turns a dataset and split into one prompt per key;
- :mod:`~semrec.annotate.token_semantics` builds one prompt per SID token and parses answers;
- :mod:`~semrec.annotate.field_statistics` writes token semantics from item fields, no LLM;
- :mod:`~semrec.annotate.annotators` answers prompts (local HF model, OpenAI-compatible HTTP
  endpoint) or reads finished annotations from a JSONL file;
- :mod:`~semrec.annotate.store` caches answers by content hash and fills in what is missing.

The resulting tables are what ``TaskContext.annotations[kind]`` holds: intentions keyed by
``"<user id>:<item id>"``, preferences by ``"<user id>"``, token semantics by ``"<a_12>"``.
"""

from semrec.annotate.annotators import (
    ANNOTATORS,
    Annotator,
    FileAnnotator,
    JsonlAnnotator,
    LocalModelAnnotator,
    OpenAICompatibleAnnotator,
)
from semrec.annotate.errors import AnnotationError
from semrec.annotate.field_statistics import FieldStatisticsExtractor
from semrec.annotate.requests import (
    DEFAULT_TEMPLATES,
    annotation_keys,
    annotation_requests,
)
from semrec.annotate.requests import KINDS as DATASET_KINDS
from semrec.annotate.store import AnnotationStore, annotate, load_annotations, prompt_hash
from semrec.annotate.token_semantics import (
    KIND as TOKEN_SEMANTICS,
)
from semrec.annotate.token_semantics import (
    SemanticsParseError,
    TokenSemantics,
    parse_token_semantics,
    semantics_table,
    token_semantics_requests,
)

KINDS = (*DATASET_KINDS, TOKEN_SEMANTICS)

__all__ = [
    "ANNOTATORS",
    "DATASET_KINDS",
    "DEFAULT_TEMPLATES",
    "KINDS",
    "TOKEN_SEMANTICS",
    "AnnotationError",
    "AnnotationStore",
    "Annotator",
    "FieldStatisticsExtractor",
    "FileAnnotator",
    "JsonlAnnotator",
    "LocalModelAnnotator",
    "OpenAICompatibleAnnotator",
    "SemanticsParseError",
    "TokenSemantics",
    "annotate",
    "annotation_keys",
    "annotation_requests",
    "load_annotations",
    "parse_token_semantics",
    "prompt_hash",
    "semantics_table",
    "token_semantics_requests",
]
