"""Built-in dataset sources on tiny fixtures written in each dataset's real layout.

Every label check runs through the real pipeline (``valid_dataset`` at the
fixture's own size, so no resizing) and compares pixel by pixel with what the
dataset's own tools would produce.
"""

import os

import cv2
import numpy as np
import pytest

from fcnseg import data, sources
from fcnseg.errors import FcnsegError
from fcnseg.validate import find_unreadable

W, H = 40, 24
GEOMETRY_ONLY = data.Augment(brightness=0.0, contrast=0.0, saturation=0.0, gamma=0.0)


def write(path, array) -> str:
    """Write a PNG (RGB arrays are given in RGB order)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    array = np.asarray(array)
    ok = cv2.imwrite(str(path), array[..., ::-1] if array.ndim == 3 else array)
    assert ok, path
    return str(path)


def image(value=None, seed=0) -> np.ndarray:
    if value is not None:
        return np.full((H, W, 3), value, np.uint8)
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def blocks(seed: int, values, dtype=np.uint8) -> np.ndarray:
    """(H, W) labels of random ``values`` in 2x2 blocks, as annotators draw: no 1-pixel runs, so no
    pixel lies strictly between its neighbours (which the pipeline takes for interpolation)."""
    small = np.random.default_rng(seed).choice(values, (H // 2, W // 2)).astype(dtype)
    return np.kron(small, np.ones((2, 2), dtype))


def pipeline_labels(source, split="val") -> dict[str, np.ndarray]:
    """{label path: label from the pipeline} for a split, in sample order."""
    paths = [s.label for s in source.cached_samples(split)]
    labels = [lab[0] for _, lab in source.dataset(split, 1).as_numpy_iterator()]
    assert len(labels) == len(paths)
    return dict(zip(paths, labels))


def label_values(dataset) -> set[int]:
    return {int(v) for _, lab in dataset.as_numpy_iterator() for v in np.unique(lab)}


# ---------------------------------------------------------------- KITTI

KITTI_RGB = {"road": (255, 0, 255), "background": (255, 0, 0), "void": (0, 0, 0)}


def kitti_gt(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A GT image with the three official colours and its expected labels."""
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, 3, (H, W))
    colours = np.array([KITTI_RGB["background"], KITTI_RGB["road"], KITTI_RGB["void"]], np.uint8)
    return colours[pick], np.array([0, 1, 255])[pick]


@pytest.fixture(scope="module")
def kitti_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("kitti")
    expected = {}
    names = [("um", i) for i in range(5)] + [("umm", 0), ("uu", 0)]
    for k, (cat, i) in enumerate(names):
        write(root / f"data_road/training/image_2/{cat}_{i:06d}.png", image(seed=k))
        for task in ("road", "lane") if cat == "um" else ("road",):
            rgb, lab = kitti_gt(10 * k + (task == "lane"))
            expected[write(root / f"data_road/training/gt_image_2/{cat}_{task}_{i:06d}.png", rgb)] = lab
    for i in range(2):
        write(root / f"data_road/testing/image_2/um_{i:06d}.png", image(seed=100 + i))
    return root, expected


@pytest.mark.parametrize("task, n_train, n_val", [("road", 6, 1), ("lane", 4, 1)])
def test_kitti_splits_classes_and_colours(kitti_dir, task, n_train, n_val):
    root, expected = kitti_dir
    source = sources.load("kitti", str(root), image_size=(W, H), task=task)
    assert (source.num_training, source.num_validation) == (n_train, n_val)
    assert source.class_names == ("background", task) and source.num_classes == 2 and source.ignore_label == 255
    assert all(s.label.endswith(f"_{task}_" + s.image[-10:]) for s in source.cached_samples("train"))
    for split in ("train", "val"):
        for path, label in pipeline_labels(source, split).items():
            np.testing.assert_array_equal(label, expected[path])
    test = source.cached_samples("test")
    assert len(test) == 2 and all(s.label is None for s in test)


def test_kitti_decodes_like_the_devkit(tmp_path):
    # The devkit reads blue > 0 as road inside red > 0: odd colours decode its way.
    write(tmp_path / "data_road/training/image_2/um_000000.png", image(seed=0))
    write(tmp_path / "data_road/training/image_2/um_000001.png", image(seed=1))
    odd = np.zeros((H, W, 3), np.uint8)
    odd[:, :10] = (254, 0, 250)  # re-saved road -> 1
    odd[:, 10:20] = (200, 30, 0)  # reddish -> background 0
    odd[:, 20:30] = (0, 0, 255)  # blue outside the valid area -> void
    for i in range(2):
        write(tmp_path / f"data_road/training/gt_image_2/um_lane_{i:06d}.png", odd)
    source = sources.load("kitti", str(tmp_path), image_size=(W, H), task="lane", val_fraction=0.5)
    (label,) = pipeline_labels(source).values()
    assert (label[:, :10] == 1).all() and (label[:, 10:20] == 0).all() and (label[:, 20:] == 255).all()


def test_kitti_split_is_deterministic_by_seed(kitti_dir):
    root, _ = kitti_dir
    val = lambda seed: [s.image for s in sources.load("kitti", str(root), seed=seed).cached_samples("val")]  # noqa
    assert val(0) == val(0)
    assert len({tuple(val(s)) for s in range(6)}) > 1
    assert sources.load("kitti", str(root)).image_size == (1248, 384)


# ---------------------------------------------------------------- Cityscapes

OFFICIAL_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                     25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def cityscapes_ids(seed: int, scale: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """labelIds with road, car, bicycle, void ids (0, 1) and unused rows; constant in scale x scale blocks."""
    ids = blocks(seed, [7, 26, 0, 1, 33, 17, 9, 29])
    expected = np.vectorize(lambda i: OFFICIAL_TRAIN_ID.get(int(i), 255))(ids)
    return np.kron(ids, np.ones((scale, scale), np.uint8)), expected


@pytest.fixture(scope="module")
def cityscapes_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes")
    expected = {}
    frames = [("train", "aachen", "aachen_000000_000019", 1), ("train", "aachen", "aachen_000001_000019", 2),
              ("train", "bochum", "bochum_000000_000313", 1), ("val", "frankfurt", "frankfurt_000000_000294", 1)]
    for k, (split, city, stem, scale) in enumerate(frames):
        write(root / f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png", image(seed=k))
        ids, lab = cityscapes_ids(k, scale)  # scale 2: labels at twice the image's resolution
        expected[write(root / f"gtFine/{split}/{city}/{stem}_gtFine_labelIds.png", ids)] = lab
        write(root / f"gtFine/{split}/{city}/{stem}_gtFine_color.png", np.zeros((H, W, 3), np.uint8))
    # The val frame also has the labelTrainIds cityscapesscripts writes.
    train_ids = blocks(9, [0, 5, 13, 18, 255])
    expected[write(root / "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelTrainIds.png",
                   train_ids)] = train_ids
    write(root / "leftImg8bit/test/berlin/berlin_000000_000019_leftImg8bit.png", image(seed=7))
    write(root / "leftImg8bit/train_extra/augsburg/augsburg_000000_000000_leftImg8bit.png", image(seed=8))
    ids, lab = cityscapes_ids(8)
    expected[write(root / "gtCoarse/train_extra/augsburg/augsburg_000000_000000_gtCoarse_labelIds.png", ids)] = lab
    for k, stem in enumerate(("aachen_000000_000019", "aachen_000001_000019")):
        ids, lab = cityscapes_ids(20 + k)
        expected[write(root / f"gtCoarse/train/aachen/{stem}_gtCoarse_labelIds.png", ids)] = lab
    ids, lab = cityscapes_ids(22)
    expected[write(root / "gtCoarse/train/bochum/bochum_000000_000313_gtCoarse_labelIds.png", ids)] = lab
    return root, expected


def test_cityscapes_table_is_the_official_one():
    from fcnseg.sources import cityscapes

    assert len(cityscapes.LABELS) == 35 and cityscapes.CLASSES.num_classes == 19
    assert cityscapes.CLASSES.class_names[:3] == ("road", "sidewalk", "building")
    assert cityscapes.CLASSES.class_names[-1] == "bicycle" and cityscapes.CLASSES.ignore_label == 255
    lut = cityscapes.CLASSES.id_to_train_id(256)
    assert {i: int(lut[i]) for i in range(256) if lut[i] != 255} == OFFICIAL_TRAIN_ID
    assert cityscapes.CLASSES.label_colors[13] == (0, 0, 142) and cityscapes.CATEGORY["car"] == "vehicle"


def test_cityscapes_fine_labels(cityscapes_dir):
    root, expected = cityscapes_dir
    source = sources.load("cityscapes", str(root), image_size=(W, H))
    assert (source.num_training, source.num_validation) == (3, 1)
    for split in ("train", "val"):
        for path, label in pipeline_labels(source, split).items():
            np.testing.assert_array_equal(label, expected[path], err_msg=path)
    assert source.cached_samples("val")[0].label.endswith("_gtFine_labelTrainIds.png")
    test = source.cached_samples("test")
    assert len(test) == 1 and test[0].label is None
    assert sources.load("cityscapes", str(root)).image_size == (1024, 512)


def test_cityscapes_train_ids_option(cityscapes_dir):
    root, expected = cityscapes_dir
    source = sources.load("cityscapes", str(root), image_size=(W, H), train_ids="no")
    ((path, label),) = pipeline_labels(source).items()
    assert path.endswith("_gtFine_labelIds.png")
    np.testing.assert_array_equal(label, expected[path])
    with pytest.raises(FcnsegError, match="aachen_000000_000019_gtFine_labelTrainIds.png"):
        sources.load("cityscapes", str(root), train_ids="yes").cached_samples("train")


def test_cityscapes_coarse(cityscapes_dir):
    root, expected = cityscapes_dir
    with pytest.raises(FcnsegError, match=r"expected folder .*gtCoarse[/\\]val"):
        sources.load("cityscapes", str(root), annotations="coarse").cached_samples("val")
    ids, lab = cityscapes_ids(30)
    expected[write(root / "gtCoarse/val/frankfurt/frankfurt_000000_000294_gtCoarse_labelIds.png", ids)] = lab
    source = sources.load("cityscapes", str(root), image_size=(W, H), annotations="coarse", train_extra=1)
    assert (source.num_training, source.num_validation) == (4, 1)
    for split in ("train", "val"):
        for path, label in pipeline_labels(source, split).items():
            np.testing.assert_array_equal(label, expected[path], err_msg=path)


# ---------------------------------------------------------------- CamVid

CAMVID_NAMES = ["0001TP_006690", "0016E5_07959", "Seq05VD_f00000", "0006R0_f01800"]


@pytest.fixture(scope="module")
def camvid_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("camvid")
    expected = {}
    for k, stem in enumerate(CAMVID_NAMES):
        split = "train" if k < 3 else "val"
        write(root / f"{split}/{stem}.png", image(seed=k))
        lab = blocks(k, np.arange(12))
        expected[write(root / f"{split}annot/{stem}.png", lab)] = lab
    # Listed with the SegNet authors' absolute paths; the unlisted extra file must be ignored.
    with open(root / "train.txt", "w") as f:
        for stem in CAMVID_NAMES[:2]:
            f.write(f"/SegNet/CamVid/train/{stem}.png /SegNet/CamVid/trainannot/{stem}.png\n")
    return root, expected


def test_camvid_segnet_layout(camvid_dir):
    root, expected = camvid_dir
    source = sources.load("camvid", str(root), image_size=(W, H))
    assert source.layout == "segnet" and (source.num_training, source.num_validation) == (2, 1)
    assert source.cached_samples("train")[0].image == os.path.join(str(root), "train", CAMVID_NAMES[0] + ".png")
    assert source.num_classes == 11 and source.ignore_label == 11 and source.class_names[3] == "Road"
    assert source.label_colors[4] == (0, 0, 192)
    for split in ("train", "val"):
        for path, label in pipeline_labels(source, split).items():
            np.testing.assert_array_equal(label, expected[path])


# Kaggle's CamVid class_dict.csv (the 32 classes of the original colour labels).
CAMVID32 = """name,r,g,b
Animal,64,128,64
Archway,192,0,128
Bicyclist,0,128,192
Bridge,0,128,64
Building,128,0,0
Car,64,0,128
CartLuggagePram,64,0,192
Child,192,128,64
Column_Pole,192,192,128
Fence,64,64,128
LaneMkgsDriv,128,0,192
LaneMkgsNonDriv,192,0,64
Misc_Text,128,128,64
MotorcycleScooter,192,0,192
OtherMoving,128,64,64
ParkingBlock,64,192,128
Pedestrian,64,64,0
Road,128,64,128
RoadShoulder,128,128,192
Sidewalk,0,0,192
SignSymbol,192,128,128
Sky,128,128,128
SUVPickupTruck,64,128,192
TrafficCone,0,0,64
TrafficLight,0,64,64
Train,192,64,128
Tree,128,128,0
Truck_Bus,192,128,192
Tunnel,64,0,64
VegetationMisc,192,192,0
Void,0,0,0
Wall,64,192,0
"""


def test_camvid_32_class_colour_layout(tmp_path):
    (tmp_path / "class_dict.csv").write_text(CAMVID32)
    rows = [line.split(",") for line in CAMVID32.split()[1:]]
    colours = np.array([[int(v) for v in r[1:]] for r in rows], np.uint8)
    train_id = {name: i for i, name in enumerate(n for n, *_ in rows if n != "Void")}
    expected_of = np.array([train_id.get(r[0], 255) for r in rows])
    expected = {}
    for k, (split, stem) in enumerate([("train", "0001TP_006690"), ("train", "0001TP_006720"),
                                       ("val", "0016E5_07959"), ("test", "0001TP_008550")]):
        write(tmp_path / f"{split}/{stem}.png", image(seed=k))
        pick = np.random.default_rng(k).integers(0, len(colours), (H, W))
        expected[write(tmp_path / f"{split}_labels/{stem}_L.png", colours[pick])] = expected_of[pick]
    source = sources.load("camvid", str(tmp_path), image_size=(W, H))
    assert source.layout == "colour" and source.num_classes == 31 and source.ignore_label == 255
    assert "Void" not in source.class_names and source.class_names[-1] == "Wall"
    assert (source.num_training, source.num_validation, source.split_size("test")) == (2, 1, 1)
    for split in ("train", "val", "test"):
        for path, label in pipeline_labels(source, split).items():
            np.testing.assert_array_equal(label, expected[path])


# ---------------------------------------------------------------- folder


def test_folder_index_masks_with_suffix_and_void(tmp_path):
    (tmp_path / "classes.csv").write_text("name,id\nbackground,0\nroad,1\nlane,2\nvoid,255\n")
    expected = {}
    for k in range(5):
        write(tmp_path / f"images/frame{k:03d}.jpg", image(seed=k))
        lab = blocks(k, [0, 1, 2, 255])
        expected[write(tmp_path / f"masks/frame{k:03d}_mask.png", lab)] = lab
    source = sources.load("folder", str(tmp_path), image_size=(W, H))
    assert source.class_names == ("background", "road", "lane") and source.ignore_label == 255
    assert (source.num_training, source.num_validation) == (4, 1)
    for split in ("train", "val"):
        for path, label in pipeline_labels(source, split).items():
            np.testing.assert_array_equal(label, expected[path])


def test_folder_colour_masks_with_subfolders(tmp_path):
    (tmp_path / "classes.csv").write_text("name,r,g,b\nbackground,0,0,0\ndrivable,255,0,255\n"
                                          "alternative,0,0,255\nignore,255,255,255\n")
    colours = np.array([[0, 0, 0], [255, 0, 255], [0, 0, 255], [255, 255, 255]], np.uint8)
    expected = {}
    for k, split in enumerate(["train", "train", "val"]):
        write(tmp_path / f"images/{split}/b1c66a42-{k}.jpg", image(seed=k))
        pick = np.random.default_rng(k).integers(0, 4, (H, W))
        expected[write(tmp_path / f"masks/{split}/b1c66a42-{k}.png", colours[pick])] = \
            np.array([0, 1, 2, 255])[pick]
    source = sources.load("folder", str(tmp_path), image_size=(W, H))
    assert source.label_format == "color" and source.class_names == ("background", "drivable", "alternative")
    assert (source.num_training, source.num_validation) == (2, 1)
    for split in ("train", "val"):
        for path, label in pipeline_labels(source, split).items():
            np.testing.assert_array_equal(label, expected[path])


@pytest.mark.parametrize("mask_ext", [".png", ".gif"])
def test_folder_carvana_like_masks(tmp_path, mask_ext):
    (tmp_path / "classes.csv").write_text("name,id\nbackground,0\ncar,255\n")
    expected = {}
    for k in range(3):
        write(tmp_path / f"images/00087a6bd4dc_{k + 1:02d}.jpg", image(seed=k))
        mask = np.zeros((H, W), np.uint8)
        mask[4 + k : 18, 6 : 30 - k] = 255
        path = str(tmp_path / f"masks/00087a6bd4dc_{k + 1:02d}_mask{mask_ext}")
        os.makedirs(tmp_path / "masks", exist_ok=True)
        if mask_ext == ".gif":  # Carvana ships its masks as GIFs
            pytest.importorskip("PIL.Image").fromarray(mask).save(path)
        else:
            write(path, mask)
        expected[path] = (mask == 255).astype(np.int32)
    source = sources.load("folder", str(tmp_path), image_size=(W, H), val_fraction="0.34")
    assert source.class_names == ("background", "car") and source.num_classes == 2
    assert (source.num_training, source.num_validation) == (2, 1)
    for split in ("train", "val"):
        for path, label in pipeline_labels(source, split).items():
            np.testing.assert_array_equal(label, expected[path])


# ---------------------------------------------------------------- training pipeline


def test_training_keeps_pairs_together(tmp_path):
    # Image k is grey 20 + 35 k, its label is class k everywhere: any mix-up shows.
    (tmp_path / "classes.csv").write_text("name,id\n" + "".join(f"c{k},{k}\n" for k in range(6)))
    for k in range(6):
        write(tmp_path / f"images/train/{k}.png", image(20 + 35 * k))
        write(tmp_path / f"masks/train/{k}.png", np.full((H, W), k, np.uint8))
    source = sources.load("folder", str(tmp_path), image_size=(W, H), seed=3, val_fraction=0)
    seen = set()
    for _ in range(2):  # two epochs, reshuffled
        for images, labels in source.train_dataset(4, augment=GEOMETRY_ONLY).as_numpy_iterator():
            for img, lab in zip(images, labels):
                valid = lab != 255  # void only where scaling down padded the crop
                assert valid.any()
                np.testing.assert_allclose(img[valid][:, 0], 20 + 35 * lab[valid], atol=1)
                seen |= set(np.unique(lab[valid]).tolist())
    assert seen == set(range(6))


def test_split_is_decoded_once_even_when_the_first_read_stops_early(tmp_path):
    # --steps-per-epoch, --val-steps and the TensorBoard samples read part of a split; tf.data
    # throws away a cache whose first pass stops early, so the source fills it at once.
    (tmp_path / "classes.csv").write_text("name,id\n" + "".join(f"c{k},{k}\n" for k in range(4)))
    for k in range(4):
        write(tmp_path / f"images/train/{k}.png", image(20 + 50 * k))
        write(tmp_path / f"masks/train/{k}.png", np.full((H, W), k, np.uint8))
    source = sources.load("folder", str(tmp_path), image_size=(W, H), val_fraction=0)
    next(iter(source.train_dataset(1, augment=GEOMETRY_ONLY)))  # a partial first read
    for folder in ("images", "masks"):  # from now on only memory can answer
        for f in (tmp_path / folder / "train").iterdir():
            f.unlink()
    labels = [int(lab[0, 0]) for _, lab in source.elements("train").as_numpy_iterator()]
    assert sorted(labels) == [0, 1, 2, 3]


def test_training_labels_stay_in_the_table(cityscapes_dir, camvid_dir, kitti_dir):
    cases = [("cityscapes", cityscapes_dir[0], set(range(19)) | {255}),
             ("camvid", camvid_dir[0], set(range(12))),
             ("kitti", kitti_dir[0], {0, 1, 255})]
    for name, root, allowed in cases:
        source = sources.load(name, str(root), image_size=(W, H))
        for seed in (0, 1):
            values = label_values(source.train_dataset(2, seed=seed))
            assert values <= allowed, (name, values - allowed)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("name", ["kitti", "cityscapes", "camvid", "folder"])
def test_missing_data_dir(tmp_path, name):
    with pytest.raises(FcnsegError, match="nowhere"):
        sources.load(name, str(tmp_path / "nowhere"))


@pytest.mark.parametrize("name, expected", [("kitti", r"training[/\\]image_2"), ("cityscapes", "leftImg8bit"),
                                            ("camvid", "trainannot"), ("folder", "images")])
def test_wrong_layout_names_the_expected_folder(tmp_path, name, expected):
    (tmp_path / "classes.csv").write_text("name,id\nroad,1\n")
    (tmp_path / "stuff").mkdir()
    with pytest.raises(FcnsegError, match=expected) as err:
        sources.load(name, str(tmp_path)).cached_samples("train")
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)


def _unlabelled_and_orphan_cases(root):
    """(source name, options, file to remove or add, path the error must name)."""
    return [
        ("kitti", {}, "remove", root["kitti"] / "data_road/training/gt_image_2/umm_road_000000.png",
         "data_road/training/image_2/umm_000000.png"),
        ("kitti", {}, "add", root["kitti"] / "data_road/training/gt_image_2/uu_road_000009.png", None),
        ("cityscapes", {}, "remove", root["cityscapes"] / "gtFine/train/bochum/bochum_000000_000313_gtFine_labelIds.png",
         "leftImg8bit/train/bochum/bochum_000000_000313_leftImg8bit.png"),
        ("cityscapes", {}, "add", root["cityscapes"] / "gtFine/train/bochum/bochum_000009_000019_gtFine_labelIds.png",
         None),
        ("camvid", {}, "remove", root["camvid"] / "valannot/0006R0_f01800.png", "val/0006R0_f01800.png"),
        ("camvid", {}, "add", root["camvid"] / "valannot/0006R0_f09999.png", None),
    ]


@pytest.mark.parametrize("case", range(6))
def test_image_without_label_and_label_without_image(tmp_path, kitti_dir, cityscapes_dir, camvid_dir, case):
    import shutil

    roots = {}
    for name, src in (("kitti", kitti_dir[0]), ("cityscapes", cityscapes_dir[0]), ("camvid", camvid_dir[0])):
        roots[name] = tmp_path / name
        shutil.copytree(src, roots[name])
    name, options, action, path, named = _unlabelled_and_orphan_cases(roots)[case]
    if action == "remove":
        os.remove(path)
    else:
        write(path, np.zeros((H, W), np.uint8))
    split = "val" if name == "camvid" else "train"
    with pytest.raises(FcnsegError) as err:
        sources.load(name, str(roots[name]), **options).cached_samples(split)
    message = str(err.value).replace("\\", "/")
    assert (named or str(path).replace("\\", "/")) in message and "\n" not in message
    # Built to collect them (as check-labels builds it): listed with the split, the rest still paired.
    collecting = sources.load(name, str(roots[name]), collect_orphans=True, **options)
    found = collecting.orphans_of(split)
    assert len(found) == 1 and found[0][0].replace("\\", "/").endswith(named or str(path).replace("\\", "/"))
    assert all(s.label for s in collecting.cached_samples(split))
    other = "train" if split == "val" else "val"
    assert collecting.orphans_of(other) == []  # each split lists its own


def test_collect_orphans_is_not_a_source_option(camvid_dir):
    with pytest.raises(FcnsegError, match="--source-option collect_orphans"):
        sources.load("camvid", str(camvid_dir[0]), **{"collect_orphans": "1"})


def test_camvid_list_with_missing_file(camvid_dir, tmp_path):
    import shutil

    root = tmp_path / "camvid"
    shutil.copytree(camvid_dir[0], root)
    with open(root / "train.txt", "a") as f:
        f.write("/SegNet/CamVid/train/gone.png /SegNet/CamVid/trainannot/gone.png\n")
    with pytest.raises(FcnsegError, match=r"train\.txt:3: .*gone\.png"):
        sources.load("camvid", str(root)).cached_samples("train")


def test_unknown_split(camvid_dir):
    with pytest.raises(FcnsegError, match="unknown split 'tain'.*" + "camvid"):
        sources.load("camvid", str(camvid_dir[0])).cached_samples("tain")


@pytest.mark.parametrize("name, options, match", [
    ("kitti", {"task": "foo"}, "task=foo.*road|lane"),
    ("kitti", {"val_fraction": "lots"}, "val_fraction=lots"),
    ("cityscapes", {"annotations": "rough"}, "annotations=rough.*fine|coarse"),
    ("cityscapes", {"train_extra": "1"}, "annotations=coarse"),
    ("camvid", {"layout": "voc"}, "layout=voc"),
    ("folder", {"val_fraction": "1.5"}, "val_fraction=1.5"),
    ("kitti", {"colour": "x"}, "colour.*no such option"),
])
def test_unknown_option_values(kitti_dir, tmp_path, name, options, match):
    (tmp_path / "classes.csv").write_text("name,id\nroad,1\n")
    with pytest.raises(FcnsegError, match=match):
        sources.load(name, str(kitti_dir[0] if name == "kitti" else tmp_path), **options)


@pytest.mark.parametrize("csv_text, match", [
    ("label,value\nroad,1\n", ":1: header label,value"),
    ("name,id\nroad,one\n", ":2: road,one"),
    ("name,r,g,b\nroad,128,64\n", ":2: expected 4 fields"),
    ("name,r,g,b\nroad,128,64,300\n", ":2: .*0..255"),
    ("name,id\nroad,1\nroad,2\n", "name road appears in more than one row"),
    ("name,r,g,b\nroad,1,2,3\ncar,1,2,3\n", "maps to two train ids"),
    ("name,id\nvoid,255\n", "no non-void class"),
    ("", "empty class CSV"),
])
def test_bad_class_csv(tmp_path, csv_text, match):
    (tmp_path / "classes.csv").write_text(csv_text)
    with pytest.raises(FcnsegError, match=match) as err:
        sources.load("folder", str(tmp_path))
    assert "classes.csv" in str(err.value)


def test_palette_and_jpeg_masks_are_refused(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    (tmp_path / "classes.csv").write_text("name,id\nbackground,0\nroad,1\n")
    write(tmp_path / "images/a.png", image(seed=0))
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((H, W), np.uint8)).convert("P").save(tmp_path / "masks/a.png")
    with pytest.raises(FcnsegError, match="palette PNG"):
        sources.load("folder", str(tmp_path)).cached_samples("train")
    os.remove(tmp_path / "masks/a.png")
    write(tmp_path / "masks/a.jpg", np.zeros((H, W), np.uint8))
    with pytest.raises(FcnsegError, match=r"masks[/\\]a\.jpg is a JPEG"):
        sources.load("folder", str(tmp_path)).cached_samples("train")


def test_find_unreadable_names_corrupt_and_mismatched_files(camvid_dir, cityscapes_dir, tmp_path):
    import shutil

    root = tmp_path / "camvid"
    shutil.copytree(camvid_dir[0], root)
    assert find_unreadable(sources.load("camvid", str(root))) is None
    label = root / "valannot/0006R0_f01800.png"
    label.write_bytes(label.read_bytes()[:60])  # truncated
    assert find_unreadable(sources.load("camvid", str(root))) == \
        f"{label}: missing, empty, corrupt or truncated label (PNG has no IEND chunk: truncated)"
    write(label, np.zeros((H // 2, W // 2), np.uint8))
    assert "label is 20x12 but its image" in find_unreadable(sources.load("camvid", str(root)))
    # Cityscapes labels may legitimately be larger than their images.
    assert find_unreadable(sources.load("cityscapes", str(cityscapes_dir[0]))) is None


def test_folder_16_bit_index_masks(tmp_path):
    (tmp_path / "classes.csv").write_text("name,id\nbackground,0\nlane,1\nroad,1000\n")
    expected = {}
    for k in range(2):
        write(tmp_path / f"images/{k}.png", image(seed=k))
        ids = blocks(k, [0, 1, 1000], np.uint16)
        expected[write(tmp_path / f"masks/{k}.png", ids)] = np.select([ids == 0, ids == 1, ids == 1000], [0, 1, 2])
    source = sources.load("folder", str(tmp_path), image_size=(W, H), val_fraction=0.5)
    for path, label in pipeline_labels(source).items():
        np.testing.assert_array_equal(label, expected[path])


def test_pipeline_size_mismatch_names_the_label(camvid_dir, tmp_path):
    import shutil

    import tensorflow as tf

    root = tmp_path / "camvid"
    shutil.copytree(camvid_dir[0], root)
    label = write(root / "valannot/0006R0_f01800.png", np.zeros((H // 2, W // 2), np.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match="0006R0_f01800.png"):
        list(sources.load("camvid", str(root), image_size=(W, H)).valid_dataset(1))
    assert label in find_unreadable(sources.load("camvid", str(root)))


# ---------------------------------------------------------------- synthetic


def _synthetic_labels(source, epoch_seed: int, n: int) -> list[bytes]:
    """The first ``n`` training labels of the epoch whose pipeline seed is ``epoch_seed``, as training
    draws them (``dataset(training=True, seed=run seed + epoch)`` calls ``elements`` so)."""
    pairs = source.elements("train", shuffle=True, seed=epoch_seed).take(n)
    return [lab.tobytes() for _, lab in pairs.as_numpy_iterator()]


def test_synthetic_fresh_draws_new_scenes_every_epoch_deterministically():
    fresh = sources.load("synthetic", image_size=(32, 24), seed=5, train_size=4, fresh="1")
    epoch1, epoch2 = _synthetic_labels(fresh, 6, 4), _synthetic_labels(fresh, 7, 4)
    assert not set(epoch1) & set(epoch2)  # no scene of epoch 1 comes back in epoch 2
    assert len(set(epoch1)) == 4
    # the same (seed, epoch) redraws the same scenes in the same order: what --resume relies on
    again = sources.load("synthetic", image_size=(32, 24), seed=5, train_size=4, fresh="1")
    assert _synthetic_labels(again, 7, 4) == epoch2
    # without fresh every epoch shows the same train_size scenes, reshuffled
    fixed = sources.load("synthetic", image_size=(32, 24), seed=5, train_size=4)
    assert set(_synthetic_labels(fixed, 6, 4)) == set(_synthetic_labels(fixed, 7, 4))
