"""The stages of a run and the two ways in: :class:`Run` (fit, test) and :class:`TrainedRun` (serving).

Each stage is one module, taking the stages it reads by constructor:

* :mod:`~semrec.pipeline.context`: the config, run directory, echo and timings they share;
* :mod:`~semrec.pipeline.data`: the dataset and split, item vectors, retrieved candidates;
* :mod:`~semrec.pipeline.tokenizers`: item and user SIDs (static, or trained with the LLM),
  the catalogue and its trie;
* :mod:`~semrec.pipeline.annotations`: the tasks and the annotations they read;
* :mod:`~semrec.pipeline.model`: the LLM with its SID tokens, the prompts, the training fingerprint;
* :mod:`~semrec.pipeline.train`: fine-tuning, resume and its refusals;
* :mod:`~semrec.pipeline.test`: ranking metrics, registered evaluators, baselines, per-user ranks;
* :mod:`~semrec.pipeline.run` puts them in order; :mod:`~semrec.pipeline.trained` loads a
  finished run without the training stage.

The names below are imported on first use, so that loading :class:`TrainedRun` for serving
does not import the training stage.
"""

from importlib import import_module

from semrec.errors import RunError
from semrec.run_directory import CHECKPOINTS, RUN_FORMAT

__all__ = ["CHECKPOINTS", "RUN_FORMAT", "PreparedData", "Run", "RunError", "TrainedRun"]

_LAZY = {
    "Run": "semrec.pipeline.run",
    "TrainedRun": "semrec.pipeline.trained",
    "PreparedData": "semrec.factories.data",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
