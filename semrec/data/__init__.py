"""Datasets: loading (``load_dataset``), k-core filtering and the leave-one-out split."""

from semrec.data import amazon  # noqa: F401  (registers amazon2014 / amazon2018 / amazon2023)
from semrec.data.dataset import DataError, RecDataset
from semrec.data.loaders import DATASET_LOADERS, dataset_options, load_dataset
from semrec.data.split import Example, Split, kcore_filter, leave_one_out, select_interactions
from semrec.data.synthetic import load_synthetic

__all__ = [
    "DATASET_LOADERS",
    "DataError",
    "Example",
    "RecDataset",
    "Split",
    "dataset_options",
    "kcore_filter",
    "leave_one_out",
    "load_dataset",
    "load_synthetic",
    "select_interactions",
]
