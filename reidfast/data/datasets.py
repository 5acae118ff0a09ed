"""The Re-ID benchmark datasets as released, and a user's own data, parsed into ReIDRecord lists.

A dataset class only parses a layout into records and says what it found (the published counts in
its docstring, the found ones in its `repr`); decoding and augmentation belong to the input
pipeline. Every class yields the same thing:

    train, query, gallery (list[ReIDRecord]): absolute image paths, identities, cameras (0-based).
        Training identities are relabelled 0..N-1 in sorted order of the released ones; query and
        gallery keep the released identities, so a query and its matches share a pid.
    num_train_pids (int): N, the number of training identities (the classifier's width).
    num_train_cams (int): the number of distinct cameras among the training images.

Rules shared with torchreid and fast-reid, so that results compare: Market-1501-style file names
are parsed with the regular expression `([-\\d]+)_c(\\d)` (identity, camera from 1); identity -1
marks junk and is dropped; identity 0 marks a distractor, kept in the gallery (it matches no
query). A missing folder or file is a FileNotFoundError naming it and the expected layout; an
image whose name does not follow its dataset's rule is a ValueError naming the file and the rule.
"""

from __future__ import annotations

import csv
import difflib
import importlib
import inspect
import json
import os
import re
from itertools import chain

from reidfast._checks import check_bool
from reidfast.data.records import ReIDRecord

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MARKET_NAME_RULE = re.compile(r"([-\d]+)_c(\d)")
# The rule's identity group also matches "1-2" or "--1", which are no identity: such names are errors.
_IDENTITY = re.compile(r"-?[0-9]+")
SPLITS = ("train", "query", "gallery")

_MARKET_LAYOUT = (
    "bounding_box_train/, query/ and bounding_box_test/ with images named like "
    "0002_c1s1_000451_03.jpg (identity, _c, camera from 1, ...)"
)
_MARKET_RULE_DOC = (
    "the Market-1501 rule: the name must contain ([-\\d]+)_c(\\d), an identity (-1 junk, 0 distractor, "
    "else >= 1), '_c' and a camera digit from 1, as in 0002_c1s1_000451_03.jpg"
)


class ReIDDataset:
    """A Re-ID dataset: training, query and gallery records, and what the trainer needs to size for.

    Args:
        train (Sequence[ReIDRecord]): training images with their identities as given (any
            non-negative ints); they are relabelled 0..N-1 in sorted order of those identities.
        query, gallery (Sequence[ReIDRecord]): evaluation images, identities kept as given.
        root (str | None): where the data was found (shown by `repr`).
        notes (Sequence[str]): lines `repr` adds under its table (what a loader dropped, and why).

    Attributes:
        train, query, gallery (list[ReIDRecord]): as above, train relabelled.
        num_train_pids (int): N, the number of training identities.
        num_train_cams (int): the number of distinct cameras among the training images.
        train_released_pids (list[int]): the given identity of each training label
            (`train_released_pids[label]`).
        name (str): the short name `build_dataset` knows the class by.

    Every split must be non-empty; pids and camids are ints >= 0.
    """

    name = "reid"

    def __init__(self, train, query, gallery, root: str | None = None, notes=()):
        for split, records in zip(SPLITS, (train, query, gallery)):
            _check_records(split, records)
        if root is not None and not isinstance(root, str):
            raise TypeError(f"root must be a str or None, got {type(root).__name__} {root!r}")
        if isinstance(notes, str) or not all(isinstance(note, str) for note in notes):
            raise TypeError(f"notes must be a sequence of str, got {notes!r}")
        self.train_released_pids = sorted({record.pid for record in train})
        label_of = {pid: label for label, pid in enumerate(self.train_released_pids)}
        self.train = [record._replace(pid=label_of[record.pid]) for record in train]
        self.query = list(query)
        self.gallery = list(gallery)
        self.num_train_pids = len(self.train_released_pids)
        self.num_train_cams = len({record.camid for record in self.train})
        self.root = root
        self.notes = list(notes)

    def __repr__(self) -> str:
        title = type(self).__name__ if self.name == type(self).name else f"{type(self).__name__} {self.name}"
        lines = [title + ("" if self.root is None else f" at {self.root}")]
        lines.append(f"  {'split':<8}{'images':>9}{'identities':>12}{'cameras':>9}")
        for split, records in zip(SPLITS, (self.train, self.query, self.gallery)):
            pids = len({record.pid for record in records})
            cams = len({record.camid for record in records})
            lines.append(f"  {split:<8}{len(records):>9}{pids:>12}{cams:>9}")
        lines.extend(f"  {note}" for note in self.notes)
        return "\n".join(lines)


def _check_records(split: str, records) -> None:
    """`records` is a non-empty sequence of ReIDRecord with a str path and int pid, camid >= 0."""
    if isinstance(records, (str, bytes)) or not hasattr(records, "__len__") or not hasattr(records, "__iter__"):
        raise TypeError(f"{split} must be a sequence of ReIDRecord, got {type(records).__name__}")
    if len(records) == 0:
        raise ValueError(f"{split} must hold at least one record, got none")
    for index, record in enumerate(records):
        if not isinstance(record, ReIDRecord):
            raise TypeError(f"{split}[{index}] must be a ReIDRecord, got {type(record).__name__} {record!r}")
        if not isinstance(record.path, str):
            raise TypeError(f"{split}[{index}].path must be a str, got {record.path!r}")
        for field in ("pid", "camid"):
            value = getattr(record, field)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{split}[{index}].{field} must be an int, got {type(value).__name__} {value!r}")
            if value < 0:
                raise ValueError(f"{split}[{index}].{field} must be >= 0, got {value} ({record.path})")


_DATASETS: dict[str, type[ReIDDataset]] = {}


def register_dataset(cls: type[ReIDDataset]) -> type[ReIDDataset]:
    """Make `cls` (a ReIDDataset subclass whose constructor takes the data's root first) known to
    `build_dataset` under `cls.name`; returns `cls`, so it can be used as a class decorator."""
    if not (isinstance(cls, type) and issubclass(cls, ReIDDataset)):
        raise TypeError(f"cls must be a ReIDDataset subclass, got {cls!r}")
    if cls.name in _DATASETS and _DATASETS[cls.name] is not cls:
        raise ValueError(f"dataset name {cls.name!r} is already taken by {_DATASETS[cls.name].__name__}")
    _DATASETS[cls.name] = cls
    return cls


def dataset_names() -> list[str]:
    """The names `build_dataset` knows, sorted."""
    return sorted(_DATASETS)


def build_dataset(name: str, root, **options) -> ReIDDataset:
    """The dataset registered as `name` (e.g. "market1501"), read from `root` with `options`
    (the class's keyword arguments, e.g. images="detected" for "cuhk03")."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__} {name!r}")
    if name not in _DATASETS:
        close = difflib.get_close_matches(name, _DATASETS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown dataset name {name!r}{hint}; known names: {', '.join(dataset_names())}")
    cls = _DATASETS[name]
    try:
        inspect.signature(cls).bind(root, **options)
    except TypeError as error:
        raise TypeError(f"dataset {name!r}: {error}; {cls.__name__} takes {inspect.signature(cls)}") from None
    return cls(root, **options)


def _check_path(name: str, value) -> str:
    """`value` is a str or os.PathLike; returns it as an absolute str path."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(value).__name__} {value!r}")
    path = os.fspath(value)
    if not isinstance(path, str):
        raise TypeError(f"{name} must name a str path, got {path!r}")
    return os.path.abspath(path)


def _locate(dataset: str, root: str, archives: tuple[str, ...], marker: str, layout: str) -> str:
    """The folder holding `marker`: `root` itself or `root`/<one of the released archive folders>."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{dataset}: root folder {root} not found; expected {layout}")
    for folder in (root, *(os.path.join(root, archive) for archive in archives)):
        if os.path.exists(os.path.join(folder, marker)):
            return folder
    places = " or ".join([root, *(os.path.join(root, archive) for archive in archives)])
    raise FileNotFoundError(f"{dataset}: {marker} not found in {places}; expected {layout}")


def _require(dataset: str, path: str, layout: str, folder: bool) -> None:
    """FileNotFoundError naming `path` and the expected layout unless it is an existing folder/file."""
    if not (os.path.isdir(path) if folder else os.path.isfile(path)):
        kind = "folder" if folder else "file"
        raise FileNotFoundError(f"{dataset}: {kind} {path} not found; expected {layout}")


def _parse_market_folder(dataset: str, folder: str, split: str) -> tuple[list[ReIDRecord], int]:
    """Records of one folder of Market-1501-style images (released pids, 0-based cameras) and the
    number of junk (-1) images dropped. Files that are not images (Thumbs.db), hidden files and
    sub-folders are not part of the layout and are skipped; images are taken in file-name order."""
    records = []
    junk = 0
    with os.scandir(folder) as entries:
        names = sorted(entry.name for entry in entries if entry.is_file())
    for name in names:
        stem, suffix = os.path.splitext(name)
        if name.startswith(".") or suffix.lower() not in IMAGE_SUFFIXES:
            continue
        path = os.path.join(folder, name)
        match = MARKET_NAME_RULE.search(stem)
        if match is None or not _IDENTITY.fullmatch(match.group(1)):
            raise ValueError(f"{dataset}: file name of {path} does not follow {_MARKET_RULE_DOC}")
        pid, camera = int(match.group(1)), int(match.group(2))
        if pid < -1 or camera == 0:
            raise ValueError(f"{dataset}: {path} has identity {pid} and camera {camera}; {_MARKET_RULE_DOC}")
        if pid == -1:
            junk += 1
            continue
        if pid == 0 and split != "gallery":
            raise ValueError(
                f"{dataset}: {path} is a distractor (identity 0) in the {split} split; distractors belong "
                "in the gallery only (bounding_box_test/)"
            )
        records.append(ReIDRecord(path, pid, camera - 1))
    if not records:
        raise ValueError(
            f"{dataset}: no images found in {folder} (junk images dropped: {junk}); expected {_MARKET_LAYOUT}"
        )
    return records, junk


def _market_layout(dataset: str, folder: str, extra_gallery: tuple[str, ...] = ()) -> dict:
    """Keyword arguments of ReIDDataset for a folder in the Market-1501 layout; `extra_gallery`
    names further folders (under `folder`) whose images join the gallery."""
    folders = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
    layout = f"{folder} to hold {_MARKET_LAYOUT}" + "".join(f", and {sub}/" for sub in extra_gallery)
    for sub in (*folders.values(), *extra_gallery):
        _require(dataset, os.path.join(folder, sub), layout, folder=True)
    splits = {}
    junk = 0
    for split, sub in folders.items():
        splits[split], dropped = _parse_market_folder(dataset, os.path.join(folder, sub), split)
        junk += dropped
    for sub in extra_gallery:
        records, dropped = _parse_market_folder(dataset, os.path.join(folder, sub), "gallery")
        splits["gallery"] += records
        junk += dropped
    notes = [f"dropped {junk} junk images (identity -1)"] if junk else []
    return dict(splits, root=folder, notes=notes)


@register_dataset
class Market1501(ReIDDataset):
    """Market-1501 (Zheng et al., "Scalable Person Re-identification: A Benchmark", ICCV 2015).

    Published counts: train 12,936 images of 751 identities; query 3,368 images of 750
    identities; gallery 15,913 images after junk removal (the 750 test identities and the
    distractors, identity 0: 751 identities); 6 cameras. With `distractors_500k`, the 500,000
    distractor images of Market-1501+500k join the gallery.

    Layout (`root` is this folder, or a folder holding it as `Market-1501-v15.09.15/`):

        bounding_box_train/   training images, e.g. 0002_c1s1_000451_03.jpg
        query/                query images
        bounding_box_test/    gallery images, junk (-1_c...) and distractors (0000_c...) included
        images/               only for distractors_500k: the Market-1501+500k distractors
        gt_bbox/              only for multi_query: hand-drawn boxes of the 1,501 identities

    File names are parsed with `([-\\d]+)_c(\\d)`: identity, then camera (1-based, becomes 0-based).
    Identity -1 (junk) is dropped from every split; identity 0 (distractor) is kept in the gallery
    and is an error in the train or query split. Non-image files (e.g. Thumbs.db) and hidden files
    are skipped; an image whose name does not parse is a ValueError naming it. Any identity >= 1
    and camera 1-9 are accepted, so a set written in this layout with other sizes (e.g. the
    synthetic set) loads as well.

    Args:
        root (str | os.PathLike): see the layout above.
        distractors_500k (bool): add the images of `images/` to the gallery (default False).
        multi_query (bool): read `gt_bbox/` into `multi_query` (default False), the images the
            multiple-query protocol pools with each query (reidfast.evaluation.pool_queries).

    Attributes (besides ReIDDataset's):
        multi_query (list[ReIDRecord]): gt_bbox/'s images, released identities, 0-based cameras
            (empty without `multi_query`).
    """

    name = "market1501"
    archive = "Market-1501-v15.09.15"

    def __init__(self, root, distractors_500k: bool = False, multi_query: bool = False):
        root = _check_path("root", root)
        check_bool("distractors_500k", distractors_500k)
        check_bool("multi_query", multi_query)
        layout = f"{root} (or {root}/{self.archive}) to hold {_MARKET_LAYOUT}"
        folder = _locate(type(self).__name__, root, (self.archive,), "bounding_box_train", layout)
        if multi_query:
            _require(type(self).__name__, os.path.join(folder, "gt_bbox"), f"{layout}, and gt_bbox/", folder=True)
        super().__init__(**_market_layout(type(self).__name__, folder, ("images",) if distractors_500k else ()))
        self.distractors_500k = distractors_500k
        self.multi_query = (
            _parse_market_folder(type(self).__name__, os.path.join(folder, "gt_bbox"), "query")[0] if multi_query else []
        )


@register_dataset
class DukeMTMCReID(ReIDDataset):
    """DukeMTMC-reID (Zheng et al., "Unlabeled Samples Generated by GAN Improve the Person
    Re-identification Baseline in vitro", ICCV 2017, arXiv:1701.07717).

    Published counts: train 16,522 images of 702 identities; query 2,228 images of 702
    identities; gallery 17,661 images of 1,110 identities (the 702 test identities and 408
    distractor identities); 8 cameras.

    Layout (`root` is this folder, or a folder holding it as `DukeMTMC-reID/`):
    `bounding_box_train/`, `query/`, `bounding_box_test/` with images named like
    0001_c2_f0046182.jpg (identity, camera from 1, frame), parsed with Market-1501's rule and
    junk/distractor conventions (see `Market1501`).

    Args:
        root (str | os.PathLike): see the layout above.
    """

    name = "dukemtmcreid"
    archive = "DukeMTMC-reID"

    def __init__(self, root):
        root = _check_path("root", root)
        layout = f"{root} (or {root}/{self.archive}) to hold {_MARKET_LAYOUT}"
        folder = _locate(type(self).__name__, root, (self.archive,), "bounding_box_train", layout)
        super().__init__(**_market_layout(type(self).__name__, folder))


_CUHK03_LAYOUT = (
    "{root} to hold cuhk03_release/cuhk-03.mat (the CUHK03 release, MATLAB v7.3) and "
    "cuhk03_new_protocol_config_labeled.mat and/or cuhk03_new_protocol_config_detected.mat (the new protocol)"
)
# Bumped whenever the cached split's content or meaning changes, so that old caches are rebuilt.
_CUHK03_CACHE_FORMAT = 1
_CUHK03_PROTOCOL_KEYS = ("filelist", "labels", "train_idx", "query_idx", "gallery_idx")
# <camera pair>_<person>_<camera within the pair, 1 or 2>_<view 01-10>.png: the new protocol's
# filelist names, which the extracted images are given too.
_CUHK03_NAME = re.compile(r"[1-9]_[0-9]{3,}_([12])_[0-9]{2}\.png")
_DIGITS = re.compile(r"[0-9]+")


@register_dataset
class CUHK03(ReIDDataset):
    """CUHK03 (Li et al., "DeepReID: Deep Filter Pairing Neural Network for Person
    Re-identification", CVPR 2014) under the new 767/700 protocol (Zhong et al., "Re-ranking Person
    Re-identification with k-reciprocal Encoding", CVPR 2017, arXiv:1701.08398).

    Published counts: 767 training and 700 test identities. Labeled boxes: train 7,368, query
    1,400, gallery 5,328 images; detected boxes: train 7,365, query 1,400, gallery 5,332. The two
    box sets give different results, so say which one a figure is for: torchreid defaults to
    detected, fast-reid to labeled (the default here).

    Layout: `root` holds `cuhk03_release/cuhk-03.mat` (MATLAB v7.3, read with h5py: groups
    `labeled` and `detected`, 5 camera pairs, each a [persons x 10] table of images, views 1-5
    from the pair's first camera and 6-10 from its second, empty cells where a view is missing)
    and `cuhk03_new_protocol_config_{labeled,detected}.mat` (read with scipy: `filelist`,
    `labels`, 1-based `train_idx`, `query_idx`, `gallery_idx`).

    The first construction writes the chosen box set's images as PNG files named
    `<pair>_<person:03>_<camera 1|2>_<view:02>.png` (the protocol's `filelist` names) to
    `<cache_dir>/<images>/` and the split to `<cache_dir>/new_protocol_<images>.json`; later
    constructions reuse them while the JSON matches the source files' sizes and its images exist.
    Each file is written under a temporary name and renamed, so processes constructing the
    dataset at once (one per rank) never see half-written files.

    Cameras are the camera within the pair (0 or 1), as torchreid and fast-reid number them: an
    identity is seen by one pair only, so the evaluation's same-camera rule is unaffected.
    Identities are the protocol's `labels`.

    Args:
        root (str | os.PathLike): see the layout above.
        images (str): "labeled" (hand-drawn boxes) or "detected" (detector boxes).
        cache_dir (str | os.PathLike | None): where extracted images and the split go;
            None: `<root>/cache` (give one when `root` is read-only).

    Attributes (besides ReIDDataset's):
        images (str), cache_dir (str): as given (cache_dir resolved).
        reused_cache (bool): True if this construction read the cache instead of extracting.

    Needs h5py and scipy (only when the cache is built).
    """

    name = "cuhk03"

    def __init__(self, root, images: str = "labeled", cache_dir=None):
        root = _check_path("root", root)
        if not isinstance(images, str):
            raise TypeError(f"images must be a str, got {type(images).__name__} {images!r}")
        if images not in ("labeled", "detected"):
            raise ValueError(f'images must be "labeled" or "detected", got {images!r}')
        cache_dir = os.path.join(root, "cache") if cache_dir is None else _check_path("cache_dir", cache_dir)
        layout = _CUHK03_LAYOUT.format(root=root)
        _require("CUHK03", root, layout, folder=True)
        mat_path = os.path.join(root, "cuhk03_release", "cuhk-03.mat")
        protocol_path = os.path.join(root, f"cuhk03_new_protocol_config_{images}.mat")
        for path in (mat_path, protocol_path):
            _require("CUHK03", path, layout, folder=False)
        image_dir = os.path.join(cache_dir, images)
        split_path = os.path.join(cache_dir, f"new_protocol_{images}.json")
        sources = {os.path.basename(path): os.path.getsize(path) for path in (mat_path, protocol_path)}
        splits = _read_cuhk03_cache(split_path, images, sources, image_dir)
        reused = splits is not None
        if not reused:
            # The protocol is read first: it is cheap and its errors should not wait for the extraction.
            splits = _read_cuhk03_protocol(protocol_path)
            names = _extract_cuhk03(mat_path, images, image_dir)
            for split in SPLITS:
                for name, _, _ in splits[split]:
                    if name not in names:
                        raise ValueError(
                            f"CUHK03: {protocol_path} lists {name} in {split}_idx, which is not an image of "
                            f"cuhk-03.mat's {images!r} set"
                        )
            _write_json_atomically(
                split_path, {"format": _CUHK03_CACHE_FORMAT, "images": images, "sources": sources, **splits}
            )
        records = {
            split: [ReIDRecord(os.path.join(image_dir, name), pid, camid) for name, pid, camid in splits[split]]
            for split in SPLITS
        }
        how = "reused" if reused else "extracted"
        super().__init__(**records, root=root, notes=[f"{images} boxes; images {how} in {image_dir}"])
        self.images = images
        self.cache_dir = cache_dir
        self.reused_cache = reused


def _import_optional(module: str, package: str, purpose: str):
    """`module`, imported; an ImportError saying which package to install if it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{purpose} needs the {package} package, which is not installed: pip install {package}"
        ) from error


def _write_atomically(path: str, write) -> None:
    """Calls write(temporary_path), then renames it to `path` (a reader sees the whole file or none)."""
    temporary = f"{path}.{os.getpid()}.tmp"
    write(temporary)
    os.replace(temporary, path)


def _write_json_atomically(path: str, data) -> None:
    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(data, file)

    os.makedirs(os.path.dirname(path), exist_ok=True)
    _write_atomically(path, write)


def _read_cuhk03_cache(split_path: str, images: str, sources: dict, image_dir: str) -> dict | None:
    """The cached split {split: [[name, pid, camid], ...]}, or None when it must be (re)built: no
    cache, one written by another format or from other source files, or images missing."""
    try:
        with open(split_path, encoding="utf-8") as file:
            cached = json.load(file)
    except (OSError, ValueError):
        return None
    if not (
        isinstance(cached, dict)
        and cached.get("format") == _CUHK03_CACHE_FORMAT
        and cached.get("images") == images
        and cached.get("sources") == sources
        and all(isinstance(cached.get(split), list) for split in SPLITS)
    ):
        return None
    names = {entry[0] for split in SPLITS for entry in cached[split]}
    if not all(os.path.isfile(os.path.join(image_dir, name)) for name in names):
        return None
    return {split: cached[split] for split in SPLITS}


def _extract_cuhk03(mat_path: str, images: str, image_dir: str) -> set[str]:
    """Writes every image of cuhk-03.mat's `images` set to `image_dir` as PNG; returns the names."""
    h5py = _import_optional("h5py", "h5py", "CUHK03 (reading cuhk-03.mat, a MATLAB v7.3 file)")
    import numpy as np
    from PIL import Image

    os.makedirs(image_dir, exist_ok=True)
    names = set()
    with h5py.File(mat_path, "r") as mat:
        if images not in mat:
            raise ValueError(f"CUHK03: {mat_path} has no {images!r} entry; expected the CUHK03 release's cuhk-03.mat")
        for pair, pair_ref in enumerate(np.asarray(mat[images]).ravel(), start=1):
            # HDF5 keeps MATLAB's column-major order, so every array reads transposed: .T restores
            # the [persons x 10] table and each image's [H, W, 3].
            table = np.asarray(mat[pair_ref]).T
            if table.ndim != 2 or table.shape[1] != 10:
                raise ValueError(
                    f"CUHK03: {mat_path}: camera pair {pair} of {images!r} is a table of shape {table.shape}, "
                    "expected [persons x 10]"
                )
            for person, row in enumerate(table, start=1):
                for view, cell_ref in enumerate(row, start=1):
                    image = np.asarray(mat[cell_ref]).T
                    if image.ndim != 3:
                        continue  # an empty cell (a view not recorded): MATLAB stores [] as a 1-D placeholder
                    if image.shape[2] != 3 or image.dtype != np.uint8:
                        raise ValueError(
                            f"CUHK03: {mat_path}: pair {pair}, person {person}, view {view} of {images!r} is "
                            f"{image.dtype} of shape {image.shape}, expected uint8 [H, W, 3]"
                        )
                    name = f"{pair}_{person:03d}_{1 if view <= 5 else 2}_{view:02d}.png"
                    picture = Image.fromarray(np.ascontiguousarray(image))
                    _write_atomically(
                        os.path.join(image_dir, name), lambda temporary, p=picture: p.save(temporary, format="PNG")
                    )
                    names.add(name)
    return names


def _matlab_string(path: str, cell) -> str:
    """The string held by one cell of a cell array of strings as scipy.io.loadmat returns it."""
    import numpy as np

    value = np.asarray(cell).ravel()
    if value.size != 1 or value.dtype.kind != "U":
        raise ValueError(f"CUHK03: {path}: filelist must be a cell array of file names, found {cell!r}")
    return str(value[0])


def _read_cuhk03_protocol(path: str) -> dict:
    """The new protocol's split {split: [[file name, pid, camid], ...]}; camid from the name."""
    scipy_io = _import_optional("scipy.io", "scipy", "CUHK03 (reading the new-protocol .mat files)")
    protocol = scipy_io.loadmat(path)
    missing = [key for key in _CUHK03_PROTOCOL_KEYS if key not in protocol]
    if missing:
        raise ValueError(
            f"CUHK03: {path} lacks {', '.join(missing)}; a new-protocol file holds {', '.join(_CUHK03_PROTOCOL_KEYS)}"
        )
    filelist = [_matlab_string(path, cell) for cell in protocol["filelist"].ravel()]
    labels = protocol["labels"].ravel()
    if len(labels) != len(filelist):
        raise ValueError(f"CUHK03: {path} has {len(filelist)} filelist entries but {len(labels)} labels")
    splits = {}
    for split in SPLITS:
        entries = []
        for index in protocol[f"{split}_idx"].ravel():
            if index != int(index) or not 1 <= index <= len(filelist):
                raise ValueError(
                    f"CUHK03: {path}: {split}_idx holds {index:g}, not an index in 1..{len(filelist)} "
                    "(MATLAB indices start at 1)"
                )
            name = filelist[int(index) - 1]
            match = _CUHK03_NAME.fullmatch(name)
            if match is None:
                raise ValueError(
                    f"CUHK03: {path}: filelist entry {name!r} is not a name like 1_001_1_01.png "
                    "(camera pair, person, camera 1 or 2 within the pair, view)"
                )
            entries.append([name, int(labels[int(index) - 1]), int(match.group(1)) - 1])
        splits[split] = entries
    return splits


_MSMT17_LAYOUT = (
    "{root} (or {root}/MSMT17_V1, {root}/MSMT17_V2) to hold list_train.txt, list_val.txt, "
    "list_query.txt, list_gallery.txt and the image folders train/ and test/ (V1) or "
    "mask_train_v2/ and mask_test_v2/ (V2)"
)
# "<folders/>field_field_<camera>[_...].jpg <identity>": one expression per line, since a list holds up
# to 82,161 lines.
_MSMT17_LINE = re.compile(r"((?:\S*/)?[^/\s_]*_[^/\s_]*_([0-9]+)(?:[_.][^/\s]*)?)\s+([0-9]+)")
_MSMT17_RULE_DOC = (
    "the MSMT17 rule: each line is '<path relative to the image folder> <identity>', and the camera "
    "(1-15) is the third '_' field of the file name, as in '0000/0000_000_01_0303morning_0015_0.jpg 0'"
)


@register_dataset
class MSMT17(ReIDDataset):
    """MSMT17 (Wei et al., "Person Transfer GAN to Bridge Domain Gap for Person Re-Identification",
    CVPR 2018, arXiv:1711.08565).

    Published counts: 4,101 identities, 126,441 images, 15 cameras. Train: 1,041 identities,
    30,248 images (32,621 with the 2,373 validation images, which show the same identities);
    query 11,659 images and gallery 82,161 images of the 3,060 test identities.

    Layout (`root` is this folder, or a folder holding it as `MSMT17_V1/` or `MSMT17_V2/`):
    `list_train.txt`, `list_val.txt` (paths under the training image folder),
    `list_query.txt`, `list_gallery.txt` (paths under the test image folder), and the image
    folders `train/`, `test/` (V1) or `mask_train_v2/`, `mask_test_v2/` (V2). A list line is
    `0000/0000_000_01_0303morning_0015_0.jpg 0`: the path and the identity; the camera is the
    third `_` field of the file name (1-based in the file, 0-based in the records). Query and
    gallery keep the lists' identities (0 is a test identity here, not a distractor).

    Args:
        root (str | os.PathLike): see the layout above.
        combine_val (bool): add the validation images to training (default False, the usual
            protocol; torchreid's combineall and fast-reid both add them only when asked).

    Attributes (besides ReIDDataset's): version ("V1" or "V2"), combine_val.
    """

    name = "msmt17"
    archives = ("MSMT17_V1", "MSMT17_V2")

    def __init__(self, root, combine_val: bool = False):
        root = _check_path("root", root)
        check_bool("combine_val", combine_val)
        layout = _MSMT17_LAYOUT.format(root=root)
        folder = _locate("MSMT17", root, self.archives, "list_train.txt", layout)
        for train_sub, test_sub, version in (("train", "test", "V1"), ("mask_train_v2", "mask_test_v2", "V2")):
            if os.path.isdir(os.path.join(folder, train_sub)) and os.path.isdir(os.path.join(folder, test_sub)):
                break
        else:
            raise FileNotFoundError(
                f"MSMT17: neither train/ and test/ (V1) nor mask_train_v2/ and mask_test_v2/ (V2) found in {folder}; "
                f"expected {layout}"
            )
        train_dir, test_dir = os.path.join(folder, train_sub), os.path.join(folder, test_sub)
        lists = {
            "train": [("list_train.txt", train_dir)] + ([("list_val.txt", train_dir)] if combine_val else []),
            "query": [("list_query.txt", test_dir)],
            "gallery": [("list_gallery.txt", test_dir)],
        }
        for entries in lists.values():
            for list_name, _ in entries:
                _require("MSMT17", os.path.join(folder, list_name), layout, folder=False)
        splits = {
            split: [
                record
                for list_name, image_dir in entries
                for record in _read_msmt17_list(os.path.join(folder, list_name), image_dir)
            ]
            for split, entries in lists.items()
        }
        notes = [f"{version} layout" + ("; validation images added to train" if combine_val else "")]
        super().__init__(**splits, root=folder, notes=notes)
        self.version = version
        self.combine_val = combine_val


def _read_msmt17_list(path: str, image_dir: str) -> list[ReIDRecord]:
    """The records of one MSMT17 list file, paths joined to `image_dir`; blank lines skipped."""
    records = []
    prefix = os.path.join(image_dir, "")
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            text = line.strip()
            if not text:
                continue
            match = _MSMT17_LINE.fullmatch(text)
            if match is None or not 1 <= int(match.group(2)) <= 15:
                raise ValueError(f"MSMT17: {path}, line {number}: {text!r} does not follow {_MSMT17_RULE_DOC}")
            records.append(ReIDRecord(prefix + match.group(1), int(match.group(3)), int(match.group(2)) - 1))
    return records


_CSV_COLUMNS = ("path", "pid", "camid", "split")


@register_dataset
class ImageFolderReID(ReIDDataset):
    """A user's own Re-ID data, as a folder in the Market-1501 layout or as a CSV list.

    - `root` a folder: it holds `bounding_box_train/`, `query/` and `bounding_box_test/` with
      images named by Market-1501's rule (`0002_c1s1_000451_03.jpg`: identity, `_c`, camera from 1),
      read exactly as `Market1501` reads them (junk -1 dropped, distractor 0 in the gallery only,
      non-image and hidden files skipped, any other unparsable image name an error naming it).
    - `root` a `.csv` file: a header naming the columns `path,pid,camid,split` (in any order, no
      others), then one row per image: `path` relative to the CSV file's folder (or absolute),
      `pid` an int >= 0, `camid` the camera as an int >= 0 (0-based, as in the records), `split`
      one of train, query, gallery. Every row becomes a record; nothing is dropped or renumbered
      except that training identities are relabelled 0..N-1 like every dataset's. Image files are
      opened by the input pipeline, which names any it cannot read.

    Args:
        root (str | os.PathLike): the folder or the CSV file.
    """

    name = "image_folder"

    def __init__(self, root):
        root = _check_path("root", root)
        if os.path.isdir(root):
            super().__init__(**_market_layout("ImageFolderReID", root))
        elif os.path.isfile(root):
            if not root.lower().endswith(".csv"):
                raise ValueError(
                    f"root must be a folder in the Market-1501 layout or a .csv list, got the file {root}"
                )
            super().__init__(**_read_csv_list(root), root=root)
        else:
            raise FileNotFoundError(
                f"ImageFolderReID: {root} not found; expected a folder holding {_MARKET_LAYOUT}, or a .csv file "
                f"with the columns {','.join(_CSV_COLUMNS)}"
            )


def _read_csv_list(path: str) -> dict[str, list[ReIDRecord]]:
    """{split: records} of a CSV list (see ImageFolderReID); errors name the file and the line."""
    folder = os.path.dirname(path)
    splits = {split: [] for split in SPLITS}
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.reader(file)
        header = [name.strip() for name in next(reader, [])]
        if sorted(header) != sorted(_CSV_COLUMNS):
            raise ValueError(
                f"ImageFolderReID: {path} must start with the header {','.join(_CSV_COLUMNS)} (any order, "
                f"no other columns), got {','.join(header)!r}"
            )
        column = {name: index for index, name in enumerate(header)}
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            where = f"ImageFolderReID: {path}, line {reader.line_num}"
            if len(row) != len(_CSV_COLUMNS):
                raise ValueError(f"{where}: expected {len(_CSV_COLUMNS)} columns, got {len(row)}: {row!r}")
            image, pid, camid, split = (row[column[name]] for name in _CSV_COLUMNS)
            pid, camid, split = pid.strip(), camid.strip(), split.strip()
            if not image:
                raise ValueError(f"{where}: path is empty")
            for field, value in (("pid", pid), ("camid", camid)):
                if not _DIGITS.fullmatch(value):
                    raise ValueError(f"{where}: {field} must be an int >= 0, got {value!r}")
            if split not in splits:
                raise ValueError(f"{where}: split must be one of {', '.join(SPLITS)}, got {split!r}")
            splits[split].append(ReIDRecord(os.path.join(folder, image), int(pid), int(camid)))
    for split, records in splits.items():
        if not records:
            raise ValueError(f"ImageFolderReID: {path} has no rows with split {split}")
    return splits


def combine(*datasets: ReIDDataset) -> ReIDDataset:
    """One dataset training on all of `datasets` and evaluated on the first (as torchreid's and
    fast-reid's multi-source training does).

    Training identities stay disjoint: dataset k's labels are shifted by the num_train_pids of the
    datasets before it, so the result's labels are 0..N-1 with N the sum, in the order given.
    Cameras stay disjoint too, since cameras of different datasets are different cameras: dataset
    k's camids are shifted by the camera-id span (1 + the largest camid over its train, query and
    gallery) of the datasets before it. Query and gallery are the first dataset's, unchanged (its
    shifts are 0), so figures compare with training on it alone.

    Args:
        datasets (ReIDDataset): one or more.

    Returns:
        ReIDDataset named "<name>+<name>+...", with the first dataset's root; its
        `train_released_pids` are the shifted labels.
    """
    if not datasets:
        raise ValueError("combine needs at least one dataset, got none")
    for index, dataset in enumerate(datasets):
        if not isinstance(dataset, ReIDDataset):
            raise TypeError(f"datasets[{index}] must be a ReIDDataset, got {type(dataset).__name__}")
    train = []
    pid_offset = camid_offset = 0
    for dataset in datasets:
        train.extend(ReIDRecord(r.path, r.pid + pid_offset, r.camid + camid_offset) for r in dataset.train)
        pid_offset += dataset.num_train_pids
        camid_offset += 1 + max(r.camid for r in chain(dataset.train, dataset.query, dataset.gallery))
    first = datasets[0]
    combined = ReIDDataset(train, first.query, first.gallery, root=first.root)
    combined.name = "+".join(dataset.name for dataset in datasets)
    return combined
