"""The sources of the three tasks fcnseg grew from: Lyft/CARLA, BDD100K drivable area, Carvana.

Fixtures are written in each dataset's released layout; the real samples under
../shared/data are used where present (skipped otherwise).
"""

import os

import cv2
import numpy as np
import pytest

from fcnseg import sources
from fcnseg.check_labels import check_labels
from fcnseg.errors import FcnsegError
from conftest import shared_data

W, H = 40, 24


def write(path, array) -> str:
    """Write a PNG (RGB arrays are given in RGB order)."""
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    array = np.asarray(array)
    assert cv2.imwrite(str(path), array[..., ::-1] if array.ndim == 3 else array), path
    return str(path)


def write_jpeg(path, rgb) -> str:
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    assert cv2.imwrite(str(path), rgb[..., ::-1]), path
    return str(path)


def image(seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def pipeline_labels(source, split) -> dict:
    paths = [s.label for s in source.cached_samples(split)]
    labels = [lab[0] for _, lab in source.dataset(split, 1).as_numpy_iterator()]
    assert len(labels) == len(paths)
    return dict(zip(paths, labels))


# ---------------------------------------------------------------- Lyft / CARLA

def carla_frame(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(CARLA ids, challenge train ids): road (7) with lines (6), a car (10) on the road, the
    ego hood (10) along the bottom rows, other classes elsewhere."""
    rng = np.random.default_rng(seed)
    ids = np.kron(rng.choice([0, 1, 2, 3, 4, 5, 8, 9, 11, 12], (H // 2, W // 2)), np.ones((2, 2), int))
    ids[12:20] = 7
    ids[14:16, 4:36:8] = 6
    ids[12:16, 10 + seed:18 + seed] = 10  # another car: stays a vehicle
    ids[20:] = 10  # the hood, touching the bottom edge
    ids[19, 10:30] = 10  # its curved top edge
    train = np.select([(ids == 7) | (ids == 6), ids == 10], [1, 2], 0)
    train[19:][ids[19:] == 10] = 255
    return ids.astype(np.uint8), train


def carla_seg(ids: np.ndarray) -> np.ndarray:
    """CameraSeg as CARLA writes it: the id in the red channel, green and blue 0."""
    return np.stack([ids, np.zeros_like(ids), np.zeros_like(ids)], -1)


@pytest.fixture(scope="module")
def lyft_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("lyft")
    expected, carla = {}, {}
    for k in range(5):
        write(root / f"Train/CameraRGB/{k}.png", image(k))
        ids, train = carla_frame(k)
        path = write(root / f"Train/CameraSeg/{k}.png", carla_seg(ids))
        expected[path], carla[path] = train, np.where(train == 255, 255, ids)
    return root, expected, carla


def test_lyft_challenge_classes_and_hood(lyft_dir):
    root, expected, _ = lyft_dir
    source = sources.load("lyft", str(root), image_size=(W, H), val_fraction="0.4")
    assert source.class_names == ("background", "road", "vehicles")
    assert (source.num_training, source.num_validation) == (3, 2)
    for split in ("train", "val"):
        for path, label in pipeline_labels(source, split).items():
            np.testing.assert_array_equal(label, expected[path])


def test_lyft_raw_carla_classes_and_no_hood(lyft_dir):
    root, _, carla = lyft_dir
    source = sources.load("lyft", str(root), image_size=(W, H), classes="carla")
    assert source.num_classes == 13 and source.class_names[7] == "roads" and source.class_names[10] == "vehicles"
    for path, label in pipeline_labels(source, "val").items():
        np.testing.assert_array_equal(label, carla[path])
    kept = sources.load("lyft", str(root), image_size=(W, H), hood="none")
    for path, label in pipeline_labels(kept, "val").items():
        assert (label[20:] == 2).all()  # the hood stays a vehicle


def test_lyft_hood_mask_file(lyft_dir, tmp_path):
    root, expected, _ = lyft_dir
    hood = np.zeros((H, W), np.uint8)
    hood[22:] = 255
    source = sources.load("lyft", str(root), image_size=(W, H), hood=write(tmp_path / "hood.png", hood))
    for path, label in pipeline_labels(source, "val").items():
        assert (label[22:] == 255).all() and (label[20:22] == 2).all()


def test_lyft_own_val_folder_is_the_val_split(lyft_dir, tmp_path):
    root, _, _ = lyft_dir
    import shutil

    shutil.copytree(root / "Train", tmp_path / "Train")
    for sub in ("CameraRGB", "CameraSeg"):
        os.makedirs(tmp_path / "val" / sub)
        shutil.move(str(tmp_path / "Train" / sub / "4.png"), str(tmp_path / "val" / sub / "4.png"))
    source = sources.load("lyft", str(tmp_path), image_size=(W, H))
    assert [os.path.basename(s.image) for s in source.cached_samples("val")] == ["4.png"]
    assert source.num_training == 4


def test_lyft_check_labels_passes_and_flags_unknown_ids(lyft_dir, tmp_path):
    root, _, _ = lyft_dir
    report = check_labels(sources.load("lyft", str(root), collect_orphans=True), previews_dir=str(tmp_path / "p"),
                          num_previews=5)  # previews also compare with the tf.data decoder, hood included
    assert report.ok, report.lines()
    assert report.pixel_counts["train"][2] == 4 * 4 * 8  # 4 train frames: the other car only, not the hood
    bad = tmp_path / "bad"
    ids, _ = carla_frame(0)
    ids[0:2, 0:4] = 13  # no CARLA 0.8 id
    write(bad / "Train/CameraRGB/0.png", image(0))
    write(bad / "Train/CameraSeg/0.png", carla_seg(ids))
    write(bad / "Train/CameraRGB/1.png", image(1))
    write(bad / "Train/CameraSeg/1.png", carla_seg(carla_frame(1)[0]))
    report = check_labels(sources.load("lyft", str(bad), collect_orphans=True))
    assert [p.reason for p in report.problems] == ["unknown values"]
    assert "13 x 8 px" in report.problems[0].message


def test_lyft_wrong_layout_and_option(tmp_path):
    with pytest.raises(FcnsegError, match=r"Train[/\\]CameraRGB"):
        sources.load("lyft", str(tmp_path)).num_training
    with pytest.raises(FcnsegError, match="classes=challenge|carla"):
        sources.load("lyft", str(tmp_path), classes="cityscapes")


def test_lyft_real_sample_hood_and_check_labels():
    root = shared_data("lyft-sample")
    source = sources.load("lyft", str(root), collect_orphans=True)
    assert (source.num_training, source.num_validation) == (5, 2)
    seg = cv2.imread(source.cached_samples("val")[0].label, cv2.IMREAD_UNCHANGED)[..., 2]
    label = source.label_ids(cv2.imread(source.cached_samples("val")[0].label), "x")
    hood = label == 256
    rows = np.flatnonzero(hood.any(1))
    assert (rows.min(), rows.max()) == (498, 599) and hood[521:].all()
    assert 73_000 < hood.sum() < 73_300
    assert ((seg == 10) & ~hood).sum() > 300  # other vehicles stay
    report = check_labels(source)
    assert report.ok, report.lines()


# ---------------------------------------------------------------- BDD100K

# One scene in train ids (direct 0, alternative 1, background 2), background the majority.
def drivable_scene(seed: int) -> np.ndarray:
    train = np.full((H, W), 2, np.uint8)
    train[14:, 10 + seed:26 + seed] = 0
    train[16:, 26 + seed:34] = 1
    return train


LEGACY_ID = np.array([1, 2, 0], np.uint8)  # train id -> 2018 drivable_maps id
LEGACY_RGB = np.array([(255, 0, 0), (0, 0, 255), (0, 0, 0)], np.uint8)
MASKS_RGB = np.array([(219, 94, 86), (86, 211, 219), (0, 0, 0)], np.uint8)


def write_bdd(root, layout: str, splits=("train", "val"), n=3, ids_as=None, colors=True) -> dict:
    """A BDD100K drivable tree of ``layout``; ``ids_as`` writes the other layout's ids (a swap)."""
    expected = {}
    for split in splits:
        for k in range(n):
            name = f"{split[0]}{k:03d}abcd-{k:08x}"
            write_jpeg(root / f"bdd100k/images/100k/{split}/{name}.jpg", image(k))
            train = drivable_scene(k)
            ids = (LEGACY_ID[train] if (ids_as or layout) == "drivable_maps" else train)
            if layout == "drivable_maps":
                path = write(root / f"bdd100k/drivable_maps/labels/{split}/{name}_drivable_id.png", ids)
                if colors:
                    write(root / f"bdd100k/drivable_maps/color_labels/{split}/{name}_drivable_color.png",
                          LEGACY_RGB[train])
            else:
                path = write(root / f"bdd100k/labels/drivable/masks/{split}/{name}.png", ids)
                if colors:
                    write(root / f"bdd100k/labels/drivable/colormaps/{split}/{name}.png", MASKS_RGB[train])
            expected[path] = train
    return expected


@pytest.mark.parametrize("layout", ["drivable_maps", "masks"])
def test_bdd100k_both_drivable_layouts_give_one_class_order(tmp_path, layout):
    expected = write_bdd(tmp_path, layout)
    source = sources.load("bdd100k", str(tmp_path), image_size=(W, H))
    assert source.layout_name == layout
    assert source.class_names == ("direct", "alternative", "background")
    assert (source.num_training, source.num_validation) == (3, 3)
    for split in ("train", "val"):
        for path, label in pipeline_labels(source, split).items():
            np.testing.assert_array_equal(label, expected[path])
    report = check_labels(sources.load("bdd100k", str(tmp_path), collect_orphans=True))
    assert report.ok, report.lines()
    assert report.files["train"] == 9  # image, id mask and colour map of each frame


@pytest.mark.parametrize("layout, other", [("drivable_maps", "masks"), ("masks", "drivable_maps")])
def test_bdd100k_check_labels_flags_the_other_release_in_a_layout(tmp_path, layout, other):
    # Every id is valid in both releases, so a values check alone cannot tell: the colour maps
    # (drawn from the true classes) disagree, and background stops being the majority.
    write_bdd(tmp_path, layout, ids_as=other)
    report = check_labels(sources.load("bdd100k", str(tmp_path), collect_orphans=True))
    reasons = {p.reason for p in report.problems}
    assert reasons == {"colour label disagrees with its index label", "implausible class shares"}, report.lines()
    assert sum(p.reason.startswith("colour") for p in report.problems) == 6  # every frame
    shares = next(p for p in report.problems if p.reason == "implausible class shares")
    assert "are these masks of the other release" in shares.message


def test_bdd100k_swap_without_colour_maps_is_flagged_by_class_shares(tmp_path):
    write_bdd(tmp_path, "drivable_maps", ids_as="masks", colors=False)
    report = check_labels(sources.load("bdd100k", str(tmp_path), collect_orphans=True))
    assert [p.reason for p in report.problems] == ["implausible class shares"] * 2
    # The correct masks pass the same check.
    write_bdd(tmp_path / "ok", "drivable_maps", colors=False)
    assert check_labels(sources.load("bdd100k", str(tmp_path / "ok"), collect_orphans=True)).ok


def test_bdd100k_layout_choice_and_val_by_seed(tmp_path):
    write_bdd(tmp_path, "drivable_maps", splits=("train",), n=5)
    source = sources.load("bdd100k", str(tmp_path / "bdd100k"), image_size=(W, H))  # bdd100k/ itself
    assert (source.num_training, source.num_validation) == (4, 1)
    write_bdd(tmp_path, "masks", splits=("train",))
    with pytest.raises(FcnsegError, match="layout=drivable_maps|masks"):
        sources.load("bdd100k", str(tmp_path))
    assert sources.load("bdd100k", str(tmp_path), layout="masks").layout_name == "masks"
    with pytest.raises(FcnsegError, match=r"drivable_maps[/\\]labels"):
        sources.load("bdd100k", str(tmp_path / "bdd100k" / "images"))


def test_bdd100k_sem_seg(tmp_path):
    expected = {}
    for split in ("train", "val"):
        for k in range(2):
            write_jpeg(tmp_path / f"images/10k/{split}/{split}{k}.jpg", image(k))
            ids = np.kron(np.random.default_rng(k).choice([0, 5, 13, 18, 255], (H // 2, W // 2)),
                          np.ones((2, 2), np.uint8)).astype(np.uint8)
            expected[write(tmp_path / f"labels/sem_seg/masks/{split}/{split}{k}.png", ids)] = ids
    source = sources.load("bdd100k", str(tmp_path), image_size=(W, H), task="sem_seg")
    assert source.num_classes == 19 and source.class_names[13] == "car" and source.ignore_label == 255
    for path, label in pipeline_labels(source, "val").items():
        np.testing.assert_array_equal(label, expected[path])
    assert check_labels(sources.load("bdd100k", str(tmp_path), task="sem_seg", collect_orphans=True)).ok


def test_bdd100k_real_sample_check_labels():
    root = shared_data("bdd100k-drivable-sample")
    source = sources.load("bdd100k", str(root), collect_orphans=True)
    assert source.layout_name == "drivable_maps" and source.num_training + source.num_validation == 6
    report = check_labels(source, previews_dir=None)
    assert report.ok, report.lines()
    assert report.files["train"] == 15  # with the colour maps, which agree pixel for pixel


@pytest.mark.slow
def test_bdd100k_real_sample_trains_one_step(tmp_path):
    import subprocess
    import sys

    root = shared_data("bdd100k-drivable-sample")
    # --batch-size 2: a batch of 5 at 64x36 crashes TF 2.21's oneDNN CPU kernels (heap corruption),
    # with the synthetic source too; not a property of this data.
    out = subprocess.run([sys.executable, "-m", "fcnseg.cli", "train", "--data-source", "bdd100k", "--data-dir",
                          str(root), "--width", "0.125", "--image-size", "64x36", "--steps-per-epoch", "1",
                          "--epochs", "1", "--batch-size", "2", "--run-dir", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "run" / "best.keras").is_file() and "mIoU" in out.stdout


# ---------------------------------------------------------------- Carvana

def write_gif(path, mask: np.ndarray, palette_01: bool) -> str:
    """A GIF mask as Carvana ships them: palette indices 0/1 drawn black/white (``palette_01``),
    or a grey 0/255 image as other tools save it."""
    from PIL import Image

    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    if palette_01:
        im = Image.fromarray((mask > 0).astype(np.uint8), "P")
        im.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    else:
        im = Image.fromarray(np.where(mask > 0, 255, 0).astype(np.uint8), "L")
    im.save(str(path))
    return str(path)


def write_carvana(root, cars=5, views=16, palette_01=True) -> dict:
    expected = {}
    for c in range(cars):
        for v in range(1, views + 1):
            stem = f"{c:04x}bd4dc{c}_{v:02d}"
            write_jpeg(root / f"train/{stem}.jpg", image(c * 16 + v))
            mask = np.zeros((H, W), np.uint8)
            mask[4 + c:18, 6 + v % 5:30] = 1
            expected[write_gif(root / f"train_masks/{stem}_mask.gif", mask, palette_01)] = mask.astype(np.int32)
    return expected


@pytest.mark.parametrize("palette_01", [True, False])
def test_carvana_gif_masks_decode_to_background_and_car(tmp_path, palette_01):
    from PIL import Image

    expected = write_carvana(tmp_path, cars=2, views=3, palette_01=palette_01)
    first = next(iter(expected))
    # What each reader makes of the file: OpenCV and TensorFlow give colours (0/255), Pillow
    # palette indices (0/1 for Carvana's own files); both mean background/car here.
    from fcnseg import imageio

    assert set(np.unique(np.array(Image.open(first)))) == {0, 1}  # Pillow: indices, both ways saved
    as_read = imageio.read(first)  # what check-labels and evaluate read: the colours, one channel
    assert as_read.ndim == 2 and set(np.unique(as_read)) == {0, 255}
    source = sources.load("carvana", str(tmp_path), image_size=(W, H), val_fraction="0.5")
    assert source.class_names == ("background", "car")
    for split in ("train", "val"):
        for path, label in pipeline_labels(source, split).items():
            np.testing.assert_array_equal(label, expected[path])
    report = check_labels(sources.load("carvana", str(tmp_path), val_fraction="0.5", collect_orphans=True))
    assert report.ok, report.lines()


def test_carvana_views_of_a_car_never_straddle_train_and_val(tmp_path):
    from fcnseg.sources.carvana import car_id

    write_carvana(tmp_path)
    held = set()
    for seed in range(4):
        source = sources.load("carvana", str(tmp_path), seed=seed)
        train = {car_id(s.image) for s in source.cached_samples("train")}
        val = {car_id(s.image) for s in source.cached_samples("val")}
        assert not train & val and len(train | val) == 5 and len(val) == 1
        assert (source.num_training, source.num_validation) == (64, 16)
        held |= val
    assert len(held) > 1  # the seed picks the car


def test_carvana_check_labels_flags_a_resized_gif(tmp_path):
    from PIL import Image

    write_carvana(tmp_path, cars=2, views=2)
    mask = np.zeros((H, W), np.uint8)
    mask[5:15, 5:30] = 255
    blurred = cv2.GaussianBlur(mask, (5, 5), 0)  # soft edges, as a bilinear resize leaves them
    Image.fromarray(blurred, "L").save(str(tmp_path / "train_masks/0000bd4dc0_01_mask.gif"))
    report = check_labels(sources.load("carvana", str(tmp_path), val_fraction="0.5", collect_orphans=True))
    assert {p.reason for p in report.problems} >= {"unknown values"}
    assert all(p.path.endswith("0000bd4dc0_01_mask.gif") for p in report.problems)
