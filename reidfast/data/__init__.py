"""Re-ID data: the benchmark datasets as released, a procedural synthetic set, transforms, samplers."""

from reidfast.data.datasets import (
    CUHK03,
    MSMT17,
    DukeMTMCReID,
    ImageFolderReID,
    Market1501,
    ReIDDataset,
    build_dataset,
    combine,
    dataset_names,
    register_dataset,
)
from reidfast.data.loader import (
    Batch,
    ImageReadError,
    ReIDImageDataset,
    SeededBatchSampler,
    build_test_loader,
    build_train_loader,
    read_image,
)
from reidfast.data.records import ReIDRecord
from reidfast.data.synthetic import SyntheticReID, make_synthetic_reid
from reidfast.data.transforms import TransformRecipe, flip_average, recipe_for, transforms_for

__all__ = [
    "Batch",
    "CUHK03",
    "DukeMTMCReID",
    "ImageFolderReID",
    "ImageReadError",
    "MSMT17",
    "Market1501",
    "ReIDDataset",
    "ReIDImageDataset",
    "ReIDRecord",
    "SeededBatchSampler",
    "SyntheticReID",
    "TransformRecipe",
    "build_dataset",
    "build_test_loader",
    "build_train_loader",
    "combine",
    "dataset_names",
    "flip_average",
    "make_synthetic_reid",
    "read_image",
    "recipe_for",
    "register_dataset",
    "transforms_for",
]
