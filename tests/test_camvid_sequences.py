"""CamVid's sequence-held-out validation: --source-option val_sequences=0001TP."""

import os

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from fcnseg import sources
from fcnseg.cli import main
from fcnseg.errors import FcnsegError
from fcnseg.sources.camvid import sequence_of

# CamVid's real layout: train holds 0001TP, 0006R0 and 0016E5; val only 0016E5 (as the SegNet split).
FRAMES = {
    "train": ["0001TP_006690", "0001TP_006720", "0006R0_f01800", "0006R0_f01830", "0016E5_00390", "0016E5_00420"],
    "val": ["0016E5_07959", "0016E5_07961"],
}


def write_camvid(root, frames=FRAMES, lists=True):
    rng = np.random.default_rng(0)
    for split, stems in frames.items():
        os.makedirs(root / split, exist_ok=True)
        os.makedirs(root / f"{split}annot", exist_ok=True)
        for stem in stems:
            cv2.imwrite(str(root / split / f"{stem}.png"), rng.integers(0, 255, (12, 16, 3), np.uint8))
            label = np.full((12, 16), 3, np.uint8)  # road, a car block and a void strip
            label[4:10, 2:9], label[:2] = 8, 11
            cv2.imwrite(str(root / f"{split}annot" / f"{stem}.png"), label)
        if lists:  # the SegNet authors' absolute paths, as in the published lists
            with open(root / f"{split}.txt", "w") as f:
                for stem in stems:
                    f.write(f"/SegNet/CamVid/{split}/{stem}.png /SegNet/CamVid/{split}annot/{stem}.png\n")
    return root


def stems(source, split):
    return [os.path.splitext(os.path.basename(s.image))[0] for s in source.cached_samples(split)]


@pytest.mark.parametrize("lists", [True, False])
def test_held_out_sequence_is_val_and_train_is_every_other_frame_of_train_and_val(tmp_path, lists):
    root = write_camvid(tmp_path, lists=lists)
    standard = sources.load("camvid", str(root))
    assert stems(standard, "val") == FRAMES["val"] and stems(standard, "train") == FRAMES["train"]

    held = sources.load("camvid", str(root), val_sequences="0001TP")
    assert stems(held, "val") == ["0001TP_006690", "0001TP_006720"]
    assert stems(held, "train") == ["0006R0_f01800", "0006R0_f01830", "0016E5_00390", "0016E5_00420",
                                    "0016E5_07959", "0016E5_07961"]
    # the val folder's frames are trained on, from where they lie
    assert os.path.join(str(root), "val", "0016E5_07959.png") in [s.image for s in held.cached_samples("train")]
    assert (held.num_training, held.num_validation) == (6, 2)

    two = sources.load("camvid", str(root), val_sequences="0001tp, 0016E5")  # comma list, any case
    assert stems(two, "train") == ["0006R0_f01800", "0006R0_f01830"]
    assert len(stems(two, "val")) == 6
    images, labels = next(iter(two.dataset("val", 8)))
    assert images.shape[0] == 6 and labels.shape[0] == 6


def test_sequence_is_the_prefix_before_the_first_underscore():
    assert sequence_of("/d/train/0001TP_006690.png") == "0001TP"
    assert sequence_of("Seq05VD_f00000.png") == "Seq05VD"


def test_unknown_or_every_sequence_is_a_one_line_error(tmp_path):
    root = write_camvid(tmp_path)
    with pytest.raises(FcnsegError) as e:
        sources.load("camvid", str(root), val_sequences="0001TP,Seq05VD")
    message = str(e.value)
    assert "\n" not in message and "val_sequences=0001TP,Seq05VD" in message and "no sequence Seq05VD" in message
    assert "0001TP, 0006R0, 0016E5" in message
    with pytest.raises(FcnsegError, match="nothing to train on"):
        sources.load("camvid", str(root), val_sequences="0001TP,0006R0,0016E5")


def test_cli_reports_unknown_sequence_in_one_line(tmp_path):
    root = write_camvid(tmp_path / "camvid")
    result = CliRunner().invoke(main, ["check-labels", "--data-source", "camvid", "--data-dir", str(root),
                                       "--source-option", "val_sequences=0002XX"])
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code != 0 and len(errors) == 1 and "Traceback" not in result.output, result.output
    assert "no sequence 0002XX" in errors[0] and "0001TP, 0006R0, 0016E5" in errors[0]
    ok = CliRunner().invoke(main, ["check-labels", "--data-source", "camvid", "--data-dir", str(root),
                                   "--source-option", "val_sequences=0001TP"])
    assert ok.exit_code == 0, ok.output


def test_train_crop_gives_native_scale_crops_and_leaves_val_whole(tmp_path):
    """train_crop=WxH: each training image is a WxH window of the image at the training size (no downscale)."""
    from fcnseg import data

    root = write_camvid(tmp_path)
    plain = data.Augment(scale=(1.0, 1.0), flip=False, brightness=0.0, contrast=0.0, saturation=0.0, gamma=0.0)
    source = sources.load("camvid", str(root), image_size=(16, 12), train_crop="8x8")
    images, labels = next(iter(source.dataset("train", 6, training=True, augment=plain, seed=1)))
    assert images.shape == (6, 8, 8, 3) and labels.shape == (6, 8, 8)
    whole = {cv2.imread(str(p))[..., ::-1].astype(np.float32).tobytes(): cv2.imread(str(p))[..., ::-1]
             for p in sorted((root / "train").glob("*.png")) + sorted((root / "val").glob("*.png"))}
    offsets = set()
    for crop in images.numpy():  # every crop is a window of one stored image, at its own scale
        found = [(y, x) for img in whole.values() for y in range(5) for x in range(9)
                 if np.array_equal(img[y:y + 8, x:x + 8].astype(np.float32), crop)]
        assert found, "a crop that is no window of any image"
        offsets.update(found)
    assert len(offsets) > 1  # random offsets, not one fixed window
    again = next(iter(source.dataset("train", 6, training=True, augment=plain, seed=1)))[0]
    np.testing.assert_array_equal(again.numpy(), images.numpy())  # fixed by the seed (--resume replays it)
    val_images, _ = next(iter(source.dataset("val", 6)))
    assert val_images.shape[1:3] == (12, 16)
    assert source.describe()["train_crop"] == [8, 8] and source.describe()["image_size"] == [16, 12]
    with pytest.raises(FcnsegError, match="train_crop=32x8: the camvid source expects WxH, .* at most the training"):
        sources.load("camvid", str(root), image_size=(16, 12), train_crop="32x8")
