"""The ``annotate`` stage: user intentions and preferences written by an LLM (LC-Rec, III-C3).

- :mod:`~semrec.annotate.requests` turns a dataset and split into one prompt per key;
- :mod:`~semrec.annotate.annotators` answers prompts (local HF model, OpenAI-compatible HTTP
  endpoint) or reads finished annotations from a JSONL file;
- :mod:`~semrec.annotate.store` caches answers by content hash and fills in what is missing.

The resulting tables are what ``TaskContext.annotations[kind]`` holds: intentions keyed by
``"<user id>:<item id>"``, preferences by ``"<user id>"``.
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
from semrec.annotate.requests import (
    DEFAULT_TEMPLATES,
    KINDS,
    annotation_keys,
    annotation_requests,
)
from semrec.annotate.store import AnnotationStore, annotate, load_annotations, prompt_hash

__all__ = [
    "ANNOTATORS",
    "DEFAULT_TEMPLATES",
    "KINDS",
    "AnnotationError",
    "AnnotationStore",
    "Annotator",
    "FileAnnotator",
    "JsonlAnnotator",
    "LocalModelAnnotator",
    "OpenAICompatibleAnnotator",
    "annotate",
    "annotation_keys",
    "annotation_requests",
    "load_annotations",
    "prompt_hash",
]
