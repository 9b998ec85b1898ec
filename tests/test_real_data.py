"""The built-in sources on the real samples in ../shared/data (skipped when absent).

Full-split statistics are computed with OpenCV/numpy; the TF pipeline is run
on a handful of images to show that it agrees with them.
"""

import glob
import os

import cv2
import numpy as np
import pytest

from fcnseg import sources
from fcnseg.errors import FcnsegError
from fcnseg.validate import find_unreadable

from conftest import shared_data

pytestmark = pytest.mark.realdata

# ../shared/data/README.md: CamVid train pixel share of classes 0..11.
CAMVID_TRAIN_SHARE = [.169, .233, .010, .317, .045, .097, .012, .011, .059, .006, .003, .040]


def test_camvid_counts_values_and_class_shares():
    root = shared_data("camvid")
    source = sources.load("camvid", str(root))
    assert (source.num_training, source.num_validation) == (367, 101)
    assert source.ignore_label == 11 and source.num_classes == 11
    assert find_unreadable(source) is None

    counts = np.zeros(256, np.int64)
    for sample in source.cached_samples("train"):
        label = cv2.imread(sample.label, cv2.IMREAD_UNCHANGED)
        assert label.shape == (360, 480), sample.label
        counts += np.bincount(label.ravel(), minlength=256)
    assert counts[12:].sum() == 0, "label values outside 0..11"
    np.testing.assert_allclose(counts[:12] / counts.sum(), CAMVID_TRAIN_SHARE, atol=0.005)
    for sample in source.cached_samples("val"):
        assert cv2.imread(sample.label, cv2.IMREAD_UNCHANGED).max() <= 11, sample.label


def test_camvid_pipeline_agrees_with_the_files():
    root = shared_data("camvid")
    source = sources.load("camvid", str(root), image_size=(480, 360))
    for split in ("train", "val"):
        samples = source.cached_samples(split)[:3]
        batches = source.dataset(split, 1).take(3).as_numpy_iterator()
        for sample, (image, label) in zip(samples, batches):
            on_disk = cv2.imread(sample.label, cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(label[0], on_disk, err_msg=sample.label)
            # Same size: the image passes through unchanged too (up to float rounding).
            rgb = cv2.imread(sample.image)[..., ::-1]
            assert np.abs(image[0] - rgb).max() < 1.0, sample.image


def test_cityscapes_train_ids_match_the_official_file():
    root = shared_data("cityscapes-samples", "mmseg-pseudo")
    stem = os.path.join(root, "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_")
    official = cv2.imread(stem + "labelTrainIds.png", cv2.IMREAD_UNCHANGED)
    label_ids = cv2.imread(stem + "labelIds.png", cv2.IMREAD_UNCHANGED)

    source = sources.load("cityscapes", str(root), image_size=(256, 128), train_ids="no")
    (_, mapped), = source.valid_dataset(1).as_numpy_iterator()
    mapped = mapped[0]
    # Exact against the official table applied to the labelIds file...
    from fcnseg.sources.cityscapes import CLASSES

    np.testing.assert_array_equal(mapped, CLASSES.id_to_train_id(256)[label_ids])
    # ...and against the official labelTrainIds file. The sample's two files
    # were downscaled from 2048x1024 separately, so they disagree on a few
    # boundary pixels (77 of 32768); each of those holds a train id found
    # within 2 pixels in the mapped labelIds. Everywhere else: equal.
    differ = np.argwhere(mapped != official)
    assert len(differ) <= 80
    padded = np.pad(mapped, 2, constant_values=-1)
    for y, x in differ:
        assert official[y, x] in padded[y : y + 5, x : x + 5], (y, x)

    # With train_ids=auto the labelTrainIds file is read directly.
    source = sources.load("cityscapes", str(root), image_size=(256, 128))
    (_, direct), = source.valid_dataset(1).as_numpy_iterator()
    np.testing.assert_array_equal(direct[0], official)


def test_cityscapes_labels_resized_nearest_to_the_image():
    root = shared_data("cityscapes-samples", "artyze")
    source = sources.load("cityscapes", str(root), image_size=(1024, 512))
    assert source.num_training == 2 and find_unreadable(source, splits=("train",)) is None
    from fcnseg.sources.cityscapes import CLASSES

    lut = CLASSES.id_to_train_id(256)
    samples = source.cached_samples("train")
    for sample, (_, label) in zip(samples, source.dataset("train", 1).as_numpy_iterator()):
        full = cv2.imread(sample.label, cv2.IMREAD_UNCHANGED)
        assert full.shape == (1024, 2048) and label.shape == (1, 512, 1024)
        # Nearest neighbour at pixel centres: output pixel i samples input 2i + 1.
        np.testing.assert_array_equal(label[0], lut[full[1::2, 1::2]])


def test_kitti_lane_sample_loads_with_its_three_colours():
    root = shared_data("kitti-road-lane-sample")
    with pytest.raises(FcnsegError, match="um_road_000000.png .*task=lane"):
        sources.load("kitti", str(root)).cached_samples("train")  # the sample has lane masks only
    source = sources.load("kitti", str(root), task="lane", image_size=(1242, 375))
    assert (source.num_training, source.num_validation) == (9, 2)
    assert len(source.cached_samples("test")) == 11
    assert find_unreadable(source) is None
    gts = sorted(glob.glob(os.path.join(root, "data_road/training/gt_image_2/um_lane_*.png")))
    colours = {tuple(c) for p in gts[:3] for c in np.unique(cv2.imread(p)[..., ::-1].reshape(-1, 3), axis=0)}
    assert colours == {(255, 0, 255), (255, 0, 0), (0, 0, 0)}
    for split in ("train", "val"):
        samples = source.cached_samples(split)[:2]
        for sample, (_, label) in zip(samples, source.dataset(split, 1).take(2).as_numpy_iterator()):
            rgb = cv2.imread(sample.label)[..., ::-1]
            expected = np.select([(rgb == (255, 0, 255)).all(-1), (rgb == (255, 0, 0)).all(-1)], [1, 0], 255)
            np.testing.assert_array_equal(label[0], expected, err_msg=sample.label)
            assert set(np.unique(label).tolist()) <= {0, 1, 255}


def test_evaluate_scores_artyze_cityscapes_at_label_resolution(tmp_path):
    """leftImg8bit 1024x512 beside gtFine labelIds 2048x1024: every one of the label's pixels is scored."""
    import json

    from click.testing import CliRunner

    from fcnseg import checkpoint
    from fcnseg.cli import main
    from fcnseg.models import linknet
    from fcnseg.sources.cityscapes import CLASSES

    root = shared_data("cityscapes-samples", "artyze")
    labels = sorted(glob.glob(str(root / "gtFine/train/*/*_gtFine_labelIds.png")))
    images = sorted(glob.glob(str(root / "leftImg8bit/train/*/*_leftImg8bit.png")))
    assert labels and len(labels) == len(images)
    assert cv2.imread(images[0]).shape[:2] == (512, 1024) and cv2.imread(labels[0], -1).shape == (1024, 2048)
    ckpt = tmp_path / "cs.keras"
    checkpoint.save(linknet(CLASSES.num_classes, width=0.125), str(ckpt), {"model": "linknet", "config": {},
                    "source": {"name": "cityscapes", "image_size": [64, 32], "classes": CLASSES.to_json()}})
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(ckpt), "--data-source", "cityscapes",
                                       "--data-dir", str(root), "--split", "train", "--output", str(out)])
    assert result.exit_code == 0, result.output
    got = json.loads(out.read_text())
    lut = CLASSES.id_to_train_id(256)
    non_void = sum(int((lut[cv2.imread(p, cv2.IMREAD_UNCHANGED)] < CLASSES.num_classes).sum()) for p in labels)
    assert got["images"] == len(labels)
    assert np.array(got["confusion_matrix"]).sum() == non_void  # at 2048x1024, not the images' 1024x512
