"""Datasets: loading (``load_dataset``), k-core filtering and the leave-one-out split."""

from semrec.data.dataset import DataError, RecDataset
from semrec.data.loaders import DATASET_LOADERS, load_dataset
from semrec.data.split import Example, Split, kcore_filter, leave_one_out
from semrec.data.synthetic import load_synthetic

__all__ = [
    "DATASET_LOADERS",
    "DataError",
    "Example",
    "RecDataset",
    "Split",
    "kcore_filter",
    "leave_one_out",
    "load_dataset",
    "load_synthetic",
]
