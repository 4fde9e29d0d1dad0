"""From users' sequences to model inputs: task pairs, compact windows, SID placeholders,
batching and the Lightning DataModule.

Above ``data`` (raw interactions, splits), ``tokenizers`` (the SIDs) and ``tasks`` (the
instruction templates); below ``models``, which consumes the batches.
"""
