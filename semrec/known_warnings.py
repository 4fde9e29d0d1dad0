"""Warnings that dependencies raise about their own calls, hidden where semrec triggers them.

semrec sets no global warning filter: a deprecation in semrec's own calls must show. The
warnings below come from code inside a dependency that semrec cannot change; each entry
says which. :func:`hide_known_warnings` hides only these, only inside its block.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

# (message regex, category, why it is safe to hide)
KNOWN_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    (
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        FutureWarning,
        "lightning 2.6's own _pytree helper calls a torch.utils._pytree API that torch 2.13 "
        "deprecates; raised on every training step",
    ),
    (
        r"`is_gradient_checkpointing` is deprecated",
        FutureWarning,
        "peft 0.21's PeftModel.__init__ reads this transformers 5 attribute itself",
    ),
    (
        r"You have overridden `on_before_batch_transfer` in `LightningModule` but have "
        r"passed in a `LightningDataModule`",
        UserWarning,
        "lightning warns whenever the module defines the hook and a data module is given; "
        "GenRecModule tokenizes pending batches there and GenRecDataModule defines none, so "
        "the module's hook is the one meant",
    ),
)


@contextlib.contextmanager
def hide_known_warnings() -> Iterator[None]:
    """Ignore the :data:`KNOWN_WARNINGS` inside the block (the filters are restored after)."""
    with warnings.catch_warnings():
        for message, category, _why in KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield
