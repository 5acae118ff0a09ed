"""Dataset loaders on miniature copies of each released layout, written here; every expectation
(counts, relabelled pids, 0-based cameras, record order) is worked out by hand from the fixtures."""

import os
import sys

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image

from reidfast.data import (
    CUHK03,
    MSMT17,
    DukeMTMCReID,
    ImageFolderReID,
    Market1501,
    ReIDDataset,
    ReIDRecord,
    build_dataset,
    combine,
    dataset_names,
    register_dataset,
)


def write_jpeg(path, value: int = 128) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (4, 8), (value, value, value)).save(path, format="JPEG")


def write_folder(folder, names) -> None:
    """Tiny JPEGs for the image names, a Thumbs.db for anything else (the archives hold some)."""
    os.makedirs(folder, exist_ok=True)
    for name in names:
        if name.endswith(".jpg"):
            write_jpeg(os.path.join(folder, name))
        else:
            with open(os.path.join(folder, name), "wb") as file:
                file.write(b"\0" * 16)


MARKET_TRAIN = [
    "0010_c6s4_002427_02.jpg",
    "0002_c1s1_000451_03.jpg",
    "0007_c3s3_064744_01.jpg",
    "0002_c2s1_000301_01.jpg",
    "0010_c1s1_000001_01.jpg",
    "Thumbs.db",
]
MARKET_QUERY = ["0007_c2s3_064444_01.jpg", "0002_c5s1_000401_01.jpg", "Thumbs.db"]
MARKET_GALLERY = [
    "0002_c3s1_000551_01.jpg",
    "0007_c6s3_065000_01.jpg",
    "0000_c1s1_000010_03.jpg",
    "0000_c4s2_000100_01.jpg",
    "-1_c1s1_000015_01.jpg",
    "-1_c2s1_000020_02.jpg",
    "Thumbs.db",
]


def write_market(folder, extra_distractors=False) -> str:
    write_folder(os.path.join(folder, "bounding_box_train"), MARKET_TRAIN)
    write_folder(os.path.join(folder, "query"), MARKET_QUERY)
    write_folder(os.path.join(folder, "bounding_box_test"), MARKET_GALLERY)
    if extra_distractors:
        write_folder(os.path.join(folder, "images"), ["0000_c1s1_900001_01.jpg", "0000_c3s2_900002_01.jpg"])
    return str(folder)


def triples(records, folder=None):
    """(file name, pid, camid) of each record; checks each lies in `folder` when given."""
    if folder is not None:
        assert all(os.path.dirname(record.path) == str(folder) for record in records)
    return [(os.path.basename(record.path), record.pid, record.camid) for record in records]


# Market fixture by hand: train pids 2, 7, 10 -> labels 0, 1, 2; file-name order; cameras c1.. -> 0..
MARKET_TRAIN_EXPECTED = [
    ("0002_c1s1_000451_03.jpg", 0, 0),
    ("0002_c2s1_000301_01.jpg", 0, 1),
    ("0007_c3s3_064744_01.jpg", 1, 2),
    ("0010_c1s1_000001_01.jpg", 2, 0),
    ("0010_c6s4_002427_02.jpg", 2, 5),
]
MARKET_QUERY_EXPECTED = [("0002_c5s1_000401_01.jpg", 2, 4), ("0007_c2s3_064444_01.jpg", 7, 1)]
MARKET_GALLERY_EXPECTED = [
    ("0000_c1s1_000010_03.jpg", 0, 0),
    ("0000_c4s2_000100_01.jpg", 0, 3),
    ("0002_c3s1_000551_01.jpg", 2, 2),
    ("0007_c6s3_065000_01.jpg", 7, 5),
]


@pytest.mark.parametrize("under_archive", [True, False])
def test_market1501_parses_the_layout(tmp_path, under_archive):
    folder = tmp_path / "Market-1501-v15.09.15" if under_archive else tmp_path
    write_market(folder)
    dataset = Market1501(tmp_path)
    assert dataset.root == str(folder)
    assert triples(dataset.train, folder / "bounding_box_train") == MARKET_TRAIN_EXPECTED
    assert triples(dataset.query, folder / "query") == MARKET_QUERY_EXPECTED
    assert triples(dataset.gallery, folder / "bounding_box_test") == MARKET_GALLERY_EXPECTED
    assert dataset.num_train_pids == 3
    assert dataset.num_train_cams == 4
    assert dataset.train_released_pids == [2, 7, 10]
    assert all(isinstance(record, ReIDRecord) for record in dataset.train + dataset.query + dataset.gallery)
    assert repr(dataset) == "\n".join(
        [
            f"Market1501 at {folder}",
            "  split      images  identities  cameras",
            "  train           5           3        4",
            "  query           2           2        2",
            "  gallery         4           3        4",
            "  dropped 2 junk images (identity -1)",
        ]
    )


def test_market1501_500k_distractors_join_the_gallery(tmp_path):
    write_market(tmp_path, extra_distractors=True)
    assert len(Market1501(tmp_path).gallery) == 4
    dataset = Market1501(tmp_path, distractors_500k=True)
    assert triples(dataset.gallery)[4:] == [("0000_c1s1_900001_01.jpg", 0, 0), ("0000_c3s2_900002_01.jpg", 0, 2)]
    assert len(dataset.train) == 5 and len(dataset.query) == 2


def test_market1501_multi_query_reads_gt_bbox(tmp_path):
    write_market(tmp_path)
    assert Market1501(tmp_path).multi_query == []
    with pytest.raises(FileNotFoundError, match="gt_bbox"):
        Market1501(tmp_path, multi_query=True)
    write_folder(os.path.join(tmp_path, "gt_bbox"), ["0002_c5s1_000376_00.jpg", "0002_c5s1_000426_00.jpg",
                                                      "0007_c2s3_064469_00.jpg"])
    dataset = Market1501(tmp_path, multi_query=True)
    assert triples(dataset.multi_query, tmp_path / "gt_bbox") == [
        ("0002_c5s1_000376_00.jpg", 2, 4), ("0002_c5s1_000426_00.jpg", 2, 4), ("0007_c2s3_064469_00.jpg", 7, 1)]


def test_market1501_errors(tmp_path):
    with pytest.raises(TypeError, match="root must be a str or os.PathLike, got int 3"):
        Market1501(3)
    with pytest.raises(FileNotFoundError, match="root folder .*missing not found; expected .*bounding_box_train/"):
        Market1501(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="bounding_box_train not found in .* or .*Market-1501-v15.09.15"):
        Market1501(tmp_path)
    write_market(tmp_path)
    with pytest.raises(TypeError, match="distractors_500k must be a bool, got int 1"):
        Market1501(tmp_path, distractors_500k=1)
    with pytest.raises(FileNotFoundError, match=r"folder .*images not found"):
        Market1501(tmp_path, distractors_500k=True)
    bad = tmp_path / "query" / "0002-c1s1_000001_01.jpg"
    write_jpeg(str(bad))
    with pytest.raises(ValueError, match=rf"{bad} does not follow the Market-1501 rule: .*\(\[-\\d\]\+\)_c\(\\d\)"):
        Market1501(tmp_path)
    bad.unlink()
    write_jpeg(str(tmp_path / "query" / "0002_c0s1_000001_01.jpg"))
    with pytest.raises(ValueError, match="0002_c0s1_000001_01.jpg has identity 2 and camera 0"):
        Market1501(tmp_path)
    (tmp_path / "query" / "0002_c0s1_000001_01.jpg").unlink()
    write_jpeg(str(tmp_path / "query" / "0000_c1s1_000001_01.jpg"))
    with pytest.raises(ValueError, match="is a distractor \\(identity 0\\) in the query split"):
        Market1501(tmp_path)
    (tmp_path / "query" / "0000_c1s1_000001_01.jpg").unlink()
    for name in os.listdir(tmp_path / "query"):
        (tmp_path / "query" / name).unlink()
    with pytest.raises(ValueError, match=r"no images found in .*query"):
        Market1501(tmp_path)
    (tmp_path / "query").rmdir()
    with pytest.raises(FileNotFoundError, match=r"folder .*query not found; expected"):
        Market1501(tmp_path)


def write_duke(folder) -> None:
    write_folder(
        os.path.join(folder, "bounding_box_train"),
        ["0005_c8_f0000001.jpg", "0001_c2_f0046182.jpg", "0001_c5_f0051341.jpg"],
    )
    write_folder(os.path.join(folder, "query"), ["0003_c1_f0000101.jpg"])
    write_folder(
        os.path.join(folder, "bounding_box_test"), ["0004_c8_f0000300.jpg", "0003_c2_f0000200.jpg", "Thumbs.db"]
    )


def test_dukemtmcreid(tmp_path):
    write_duke(tmp_path / "DukeMTMC-reID")
    dataset = DukeMTMCReID(tmp_path)
    assert triples(dataset.train) == [
        ("0001_c2_f0046182.jpg", 0, 1),
        ("0001_c5_f0051341.jpg", 0, 4),
        ("0005_c8_f0000001.jpg", 1, 7),
    ]
    assert triples(dataset.query) == [("0003_c1_f0000101.jpg", 3, 0)]
    assert triples(dataset.gallery) == [("0003_c2_f0000200.jpg", 3, 1), ("0004_c8_f0000300.jpg", 4, 7)]
    assert (dataset.num_train_pids, dataset.num_train_cams) == (2, 3)
    assert DukeMTMCReID(tmp_path / "DukeMTMC-reID").root == str(tmp_path / "DukeMTMC-reID")


MSMT_LISTS = {
    "list_train.txt": "0000/0000_000_01_0303morning_0015_0.jpg 0\n0000/0000_001_05_0303morning_0036_1.jpg 0\n"
    "0003/0003_000_15_0303afternoon_0100_0.jpg 3\n",
    "list_val.txt": "0003/0003_002_07_0303noon_0200_0.jpg 3\n0005/0005_000_02_0303noon_0300_0.jpg 5\n",
    "list_query.txt": "0000/0000_000_10_0113morning_0005_0.jpg 0\n0002/0002_004_03_0113noon_0010_1.jpg 2\n",
    "list_gallery.txt": "0000/0000_001_12_0113morning_0008_0.jpg 0\n0002/0002_002_14_0113noon_0011_0.jpg 2\n"
    "0001/0001_000_04_0113noon_0020_0.jpg 1\n\n",
}


def write_msmt17(folder, version: str) -> None:
    train, test = ("train", "test") if version == "V1" else ("mask_train_v2", "mask_test_v2")
    os.makedirs(os.path.join(folder, train))
    os.makedirs(os.path.join(folder, test))
    for name, text in MSMT_LISTS.items():
        with open(os.path.join(folder, name), "w") as file:
            file.write(text)


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_msmt17_layouts_and_validation_set(tmp_path, version):
    folder = tmp_path / f"MSMT17_{version}"
    write_msmt17(folder, version)
    train_dir, test_dir = ("train", "test") if version == "V1" else ("mask_train_v2", "mask_test_v2")
    dataset = MSMT17(tmp_path)
    assert dataset.version == version and dataset.root == str(folder)
    assert dataset.train[0].path == str(folder / train_dir / "0000" / "0000_000_01_0303morning_0015_0.jpg")
    assert dataset.query[0].path == str(folder / test_dir / "0000" / "0000_000_10_0113morning_0005_0.jpg")
    # train pids 0, 3 -> 0, 1; camera = third field - 1
    assert [(r.pid, r.camid) for r in dataset.train] == [(0, 0), (0, 4), (1, 14)]
    assert [(r.pid, r.camid) for r in dataset.query] == [(0, 9), (2, 2)]
    assert [(r.pid, r.camid) for r in dataset.gallery] == [(0, 11), (2, 13), (1, 3)]
    assert (dataset.num_train_pids, dataset.num_train_cams) == (2, 3)
    with_val = MSMT17(folder, combine_val=True)
    # pids 0, 3, 5 -> 0, 1, 2; the validation images live in the training folder
    assert [(r.pid, r.camid) for r in with_val.train] == [(0, 0), (0, 4), (1, 14), (1, 6), (2, 1)]
    assert with_val.train[3].path == str(folder / train_dir / "0003" / "0003_002_07_0303noon_0200_0.jpg")
    assert (with_val.num_train_pids, with_val.num_train_cams) == (3, 5)


def test_msmt17_errors(tmp_path):
    write_msmt17(tmp_path, "V1")
    with pytest.raises(TypeError, match="combine_val must be a bool"):
        MSMT17(tmp_path, combine_val="yes")
    os.remove(tmp_path / "list_val.txt")
    assert len(MSMT17(tmp_path).train) == 3
    with pytest.raises(FileNotFoundError, match=r"file .*list_val.txt not found"):
        MSMT17(tmp_path, combine_val=True)
    with open(tmp_path / "list_query.txt", "a") as file:
        file.write("0004/0004_000_16_0113noon_0001_0.jpg 4\n")
    with pytest.raises(ValueError, match=r"list_query.txt, line 3: .*0004_000_16.* does not follow the MSMT17 rule"):
        MSMT17(tmp_path)
    with open(tmp_path / "list_query.txt", "w") as file:
        file.write("0000/0000_000_10_0113morning_0005_0.jpg\n")
    with pytest.raises(ValueError, match=r"list_query.txt, line 1: "):
        MSMT17(tmp_path)
    os.remove(tmp_path / "list_gallery.txt")
    with pytest.raises(FileNotFoundError, match=r"file .*list_gallery.txt not found"):
        MSMT17(tmp_path)
    os.rmdir(tmp_path / "test")
    with pytest.raises(FileNotFoundError, match=r"neither train/ and test/ \(V1\) nor mask_train_v2/"):
        MSMT17(tmp_path)


# CUHK03 fixture: pair 1 shows persons 1-3, pair 2 persons 1-2; columns 1-5 are the pair's first
# camera, 6-10 its second. Labeled views below; the detected set lacks 1_001_1_02.
CUHK03_VIEWS = {(1, 1): [1, 2, 6], (1, 2): [1, 6, 7], (1, 3): [1, 6], (2, 1): [1, 2, 6], (2, 2): [1, 6]}
CUHK03_PERSONS = {1: 3, 2: 2}
CUHK03_LABELS = {(1, 1): 1, (1, 2): 2, (1, 3): 3, (2, 1): 4, (2, 2): 5}  # the protocol's identities


def cuhk03_image(pair: int, person: int, view: int, offset: int) -> np.ndarray:
    """A distinct 8x4 RGB image (H=8 != W=4, so a missed transpose shows)."""
    y, x, c = np.meshgrid(np.arange(8), np.arange(4), np.arange(3), indexing="ij")
    return (y * 12 + x * 3 + c + 40 * pair + 20 * person + 2 * view + offset).astype(np.uint8)


def cuhk03_name(pair, person, view):
    return f"{pair}_{person:03d}_{1 if view <= 5 else 2}_{view:02d}.png"


def write_cuhk03_mat(path) -> None:
    """cuhk-03.mat as MATLAB v7.3 writes it: cells are object references into #refs#, every array
    transposed (HDF5 order), empty cells a 1-D uint64 placeholder marked MATLAB_empty."""
    with h5py.File(path, "w") as mat:
        refs = mat.create_group("#refs#")
        counter = iter(range(10**6))

        def store(data, empty=False):
            dataset = refs.create_dataset(f"r{next(counter)}", data=data)
            if empty:
                dataset.attrs["MATLAB_empty"] = np.uint8(1)
            return dataset.ref

        for images, offset in (("labeled", 0), ("detected", 7)):
            pair_refs = []
            for pair, persons in CUHK03_PERSONS.items():
                table = np.empty((persons, 10), dtype=object)  # MATLAB's [persons x 10]
                for person in range(1, persons + 1):
                    views = CUHK03_VIEWS[(pair, person)]
                    if images == "detected" and (pair, person) == (1, 1):
                        views = [1, 6]
                    for view in range(1, 11):
                        if view in views:
                            table[person - 1, view - 1] = store(cuhk03_image(pair, person, view, offset).T)
                        else:
                            table[person - 1, view - 1] = store(np.zeros(2, dtype=np.uint64), empty=True)
                table_set = refs.create_dataset(f"t{images}{pair}", data=table.T, dtype=h5py.ref_dtype)
                pair_refs.append(table_set.ref)
            mat.create_dataset(images, data=np.array([pair_refs], dtype=object), dtype=h5py.ref_dtype)


def write_protocol(path, names, train, query, gallery) -> None:
    """A new-protocol file: filelist (cell array), labels, camId and 1-based index columns."""
    filelist = np.empty((len(names), 1), dtype=object)
    filelist[:, 0] = names
    labels = [CUHK03_LABELS[(int(n.split("_")[0]), int(n.split("_")[1]))] for n in names]
    position = {name: index + 1 for index, name in enumerate(names)}
    scipy.io.savemat(
        path,
        {
            "filelist": filelist,
            "labels": np.array(labels, dtype=np.float64)[:, None],
            "camId": np.array([int(n.split("_")[2]) for n in names], dtype=np.float64)[:, None],
            **{
                f"{split}_idx": np.array([position[n] for n in chosen], dtype=np.float64)[:, None]
                for split, chosen in (("train", train), ("query", query), ("gallery", gallery))
            },
        },
    )


LABELED_NAMES = [cuhk03_name(pair, person, view) for (pair, person), views in CUHK03_VIEWS.items() for view in views]
CUHK03_TRAIN = ["1_002_1_01.png", "1_002_2_06.png", "1_002_2_07.png", "2_002_1_01.png", "2_002_2_06.png"]
CUHK03_QUERY = ["1_001_1_01.png", "1_003_2_06.png", "2_001_2_06.png"]
CUHK03_GALLERY = ["1_001_1_02.png", "1_001_2_06.png", "1_003_1_01.png", "2_001_1_01.png", "2_001_1_02.png"]


def write_cuhk03(root) -> None:
    os.makedirs(root / "cuhk03_release")
    write_cuhk03_mat(root / "cuhk03_release" / "cuhk-03.mat")
    labeled = root / "cuhk03_new_protocol_config_labeled.mat"
    write_protocol(labeled, LABELED_NAMES, CUHK03_TRAIN, CUHK03_QUERY, CUHK03_GALLERY)
    detected = [name for name in LABELED_NAMES if name != "1_001_1_02.png"]
    write_protocol(
        root / "cuhk03_new_protocol_config_detected.mat",
        detected,
        CUHK03_TRAIN,
        CUHK03_QUERY[:2],
        ["1_001_2_06.png", "1_003_1_01.png", "2_001_1_01.png", "2_001_1_02.png", "2_001_2_06.png"],
    )


def test_cuhk03_extracts_once_and_reuses_the_cache(tmp_path, monkeypatch):
    write_cuhk03(tmp_path)
    dataset = CUHK03(tmp_path)
    image_dir = tmp_path / "cache" / "labeled"
    assert not dataset.reused_cache
    assert sorted(os.listdir(image_dir)) == sorted(LABELED_NAMES)
    # labels 2, 5 -> 0, 1; camera = the camera within the pair - 1
    assert triples(dataset.train, image_dir) == [
        ("1_002_1_01.png", 0, 0),
        ("1_002_2_06.png", 0, 1),
        ("1_002_2_07.png", 0, 1),
        ("2_002_1_01.png", 1, 0),
        ("2_002_2_06.png", 1, 1),
    ]
    assert triples(dataset.query) == [("1_001_1_01.png", 1, 0), ("1_003_2_06.png", 3, 1), ("2_001_2_06.png", 4, 1)]
    assert triples(dataset.gallery) == [
        ("1_001_1_02.png", 1, 0),
        ("1_001_2_06.png", 1, 1),
        ("1_003_1_01.png", 3, 0),
        ("2_001_1_01.png", 4, 0),
        ("2_001_1_02.png", 4, 0),
    ]
    assert (dataset.num_train_pids, dataset.num_train_cams) == (2, 2)
    for pair, person, view in ((1, 2, 7), (2, 1, 1)):
        written = np.asarray(Image.open(image_dir / cuhk03_name(pair, person, view)))
        np.testing.assert_array_equal(written, cuhk03_image(pair, person, view, 0))

    monkeypatch.setattr(h5py, "File", None)  # a second construction must not read the .mat again
    again = CUHK03(tmp_path, images="labeled")
    assert again.reused_cache
    assert (again.train, again.query, again.gallery) == (dataset.train, dataset.query, dataset.gallery)
    monkeypatch.undo()
    os.remove(image_dir / "2_001_1_02.png")
    assert not CUHK03(tmp_path).reused_cache
    assert os.path.isfile(image_dir / "2_001_1_02.png")


def test_cuhk03_detected_and_cache_dir(tmp_path):
    write_cuhk03(tmp_path)
    dataset = build_dataset("cuhk03", tmp_path, images="detected", cache_dir=tmp_path / "elsewhere")
    assert isinstance(dataset, CUHK03) and dataset.images == "detected"
    assert (len(dataset.train), len(dataset.query), len(dataset.gallery)) == (5, 2, 5)
    assert os.path.isfile(tmp_path / "elsewhere" / "new_protocol_detected.json")
    assert sorted(os.listdir(tmp_path / "elsewhere" / "detected")) == sorted(set(LABELED_NAMES) - {"1_001_1_02.png"})
    written = np.asarray(Image.open(tmp_path / "elsewhere" / "detected" / "1_003_2_06.png"))
    np.testing.assert_array_equal(written, cuhk03_image(1, 3, 6, 7))
    assert not os.path.exists(tmp_path / "cache")


def test_cuhk03_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="images must be \"labeled\" or \"detected\", got 'label'"):
        CUHK03(tmp_path, images="label")
    with pytest.raises(TypeError, match="images must be a str, got int 1"):
        CUHK03(tmp_path, images=1)
    with pytest.raises(FileNotFoundError, match=r"file .*cuhk03_release/cuhk-03.mat not found; expected"):
        CUHK03(tmp_path)
    write_cuhk03(tmp_path)
    os.remove(tmp_path / "cuhk03_new_protocol_config_detected.mat")
    with pytest.raises(FileNotFoundError, match="cuhk03_new_protocol_config_detected.mat not found"):
        CUHK03(tmp_path, images="detected")
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match="needs the h5py package, which is not installed: pip install h5py"):
        CUHK03(tmp_path)
    protocol_path = tmp_path / "cuhk03_new_protocol_config_labeled.mat"
    protocol = {key: value for key, value in scipy.io.loadmat(protocol_path).items() if not key.startswith("__")}
    protocol["gallery_idx"] = np.array([[1.0], [0.0]])
    scipy.io.savemat(protocol_path, protocol)
    # still without h5py: the protocol is checked before the images are extracted
    with pytest.raises(ValueError, match=r"gallery_idx holds 0, not an index in 1..13 \(MATLAB indices start at 1\)"):
        CUHK03(tmp_path)
    monkeypatch.undo()
    write_protocol(protocol_path, LABELED_NAMES + ["1_001_1_5.png"], ["1_001_1_5.png"], [], [])
    with pytest.raises(ValueError, match=r"filelist entry '1_001_1_5.png' is not a name like 1_001_1_01.png"):
        CUHK03(tmp_path)
    write_protocol(protocol_path, LABELED_NAMES + ["1_001_1_05.png"], [], ["1_001_1_05.png"], [])
    with pytest.raises(ValueError, match="lists 1_001_1_05.png in query_idx, which is not an image of .*'labeled' set"):
        CUHK03(tmp_path)
    scipy.io.savemat(protocol_path, {"filelist": np.array([["1_001_1_01.png"]], dtype=object)})
    with pytest.raises(ValueError, match="lacks labels, train_idx, query_idx, gallery_idx"):
        CUHK03(tmp_path)


def test_combine_keeps_identities_and_cameras_disjoint(tmp_path):
    write_market(tmp_path / "market")
    write_duke(tmp_path / "duke")
    market, duke = Market1501(tmp_path / "market"), DukeMTMCReID(tmp_path / "duke")
    both = combine(market, duke)
    assert both.name == "market1501+dukemtmcreid"
    # Duke's labels 0, 1 follow Market's 3 labels; its cameras follow Market's camera span (6)
    assert [(r.pid, r.camid) for r in both.train] == [(0, 0), (0, 1), (1, 2), (2, 0), (2, 5), (3, 7), (3, 10), (4, 13)]
    assert (both.num_train_pids, both.num_train_cams) == (5, 7)
    assert both.query == market.query and both.gallery == market.gallery
    assert repr(both).splitlines()[0] == f"ReIDDataset market1501+dukemtmcreid at {tmp_path / 'market'}"
    with pytest.raises(ValueError, match="at least one dataset"):
        combine()
    with pytest.raises(TypeError, match=r"datasets\[1\] must be a ReIDDataset, got str"):
        combine(market, "duke")


def test_image_folder_market_layout(tmp_path):
    write_market(tmp_path)
    dataset = ImageFolderReID(tmp_path)
    assert triples(dataset.train) == MARKET_TRAIN_EXPECTED
    assert triples(dataset.gallery) == MARKET_GALLERY_EXPECTED


def write_csv(path, text) -> None:
    with open(path, "w") as file:
        file.write(text)


def test_image_folder_csv(tmp_path):
    absolute = tmp_path / "other" / "g2.png"
    write_csv(
        tmp_path / "list.csv",
        "split,path,pid,camid\ntrain,imgs/a.jpg,10,0\ntrain,imgs/b.jpg,9,1\ntrain,imgs/c.jpg,10,2\n\n"
        f"query,imgs/q.jpg,9,0\ngallery,imgs/g1.jpg,9,1\ngallery,{absolute},0,3\n",
    )
    dataset = ImageFolderReID(tmp_path / "list.csv")
    # numeric order of the identities: 9 -> 0, 10 -> 1
    assert dataset.train == [
        ReIDRecord(str(tmp_path / "imgs" / "a.jpg"), 1, 0),
        ReIDRecord(str(tmp_path / "imgs" / "b.jpg"), 0, 1),
        ReIDRecord(str(tmp_path / "imgs" / "c.jpg"), 1, 2),
    ]
    assert dataset.query == [ReIDRecord(str(tmp_path / "imgs" / "q.jpg"), 9, 0)]
    assert dataset.gallery == [ReIDRecord(str(tmp_path / "imgs" / "g1.jpg"), 9, 1), ReIDRecord(str(absolute), 0, 3)]
    assert (dataset.num_train_pids, dataset.num_train_cams) == (2, 3)


@pytest.mark.parametrize(
    "text, message",
    [
        ("path,pid,cam,split\n", r"must start with the header path,pid,camid,split .*got 'path,pid,cam,split'"),
        ("path,pid,camid,split\na.jpg,1,0,train\nb.jpg,-1,0,query\n", r"line 3: pid must be an int >= 0, got '-1'"),
        ("path,pid,camid,split\na.jpg,1,0,train\nb.jpg,1,0,val\n", r"line 3: split must be one of .*, got 'val'"),
        ("path,pid,camid,split\na.jpg,1,0\n", r"line 2: expected 4 columns, got 3"),
        ("path,pid,camid,split\na.jpg,1,0,train\nb.jpg,1,0,query\n", r"has no rows with split gallery"),
    ],
)
def test_image_folder_csv_errors(tmp_path, text, message):
    write_csv(tmp_path / "list.csv", text)
    with pytest.raises(ValueError, match=message):
        ImageFolderReID(tmp_path / "list.csv")


def test_image_folder_root_errors(tmp_path):
    write_csv(tmp_path / "list.txt", "path,pid,camid,split\n")
    with pytest.raises(ValueError, match=r"root must be a folder in the Market-1501 layout or a .csv list, got .*list.txt"):
        ImageFolderReID(tmp_path / "list.txt")
    with pytest.raises(FileNotFoundError, match=r"nothing.csv not found; expected a folder holding bounding_box_"):
        ImageFolderReID(tmp_path / "nothing.csv")


def test_registry(tmp_path):
    names = dataset_names()
    assert names == sorted(names) and {"cuhk03", "dukemtmcreid", "image_folder", "market1501", "msmt17"} <= set(names)
    write_market(tmp_path)
    dataset = build_dataset("market1501", tmp_path)
    assert isinstance(dataset, Market1501) and len(dataset.train) == 5
    with pytest.raises(ValueError, match=r"unknown dataset name 'market' \(did you mean 'market1501'\?\); known names: cuh"):
        build_dataset("market", tmp_path)
    with pytest.raises(TypeError, match=r"dataset 'msmt17': .*'images'.*MSMT17 takes \(root, combine_val"):
        build_dataset("msmt17", tmp_path, images="labeled")
    with pytest.raises(TypeError, match="cls must be a ReIDDataset subclass"):
        register_dataset(dict)

    class Other(ReIDDataset):
        name = "market1501"

    with pytest.raises(ValueError, match="dataset name 'market1501' is already taken by Market1501"):
        register_dataset(Other)


def test_base_class_checks_records():
    record = ReIDRecord("a.jpg", 4, 0)
    dataset = ReIDDataset([record, ReIDRecord("b.jpg", 1, 1)], [record], [record])
    assert dataset.train == [ReIDRecord("a.jpg", 1, 0), ReIDRecord("b.jpg", 0, 1)]
    with pytest.raises(ValueError, match=r"query\[0\].camid must be >= 0, got -1 \(q.jpg\)"):
        ReIDDataset([record], [ReIDRecord("q.jpg", 1, -1)], [record])
    with pytest.raises(TypeError, match=r"gallery\[1\] must be a ReIDRecord, got tuple"):
        ReIDDataset([record], [record], [record, ("g.jpg", 1, 0)])
    with pytest.raises(TypeError, match=r"train\[0\].pid must be an int, got bool True"):
        ReIDDataset([ReIDRecord("a.jpg", True, 0)], [record], [record])
    with pytest.raises(ValueError, match="train must hold at least one record, got none"):
        ReIDDataset([], [record], [record])
