"""Bad inputs through the real CLI: every one ends in one line naming the file, never a traceback.

Labels check-labels rejects stop training; unreadable files, symlink loops, read-only and full
folders, empty splits and huge images; and one decode policy (truncated JPEG, EXIF orientation)
in check-labels, the training pipeline and predict.
"""

import os
import shutil
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest

W, H = 48, 32
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- helpers


def cli(*args, priv: bool = False, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python -m fcnseg.cli ARGS``; ``priv`` drops root's power to ignore file modes."""
    cmd = [sys.executable, "-m", "fcnseg.cli", *map(str, args)]
    if priv and os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv is missing: root ignores file modes without it")
        caps = "-dac_override,-dac_read_search"
        cmd = ["setpriv", "--bounding-set", caps, "--inh-caps", caps, *cmd]
    full_env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
                "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Assert a non-zero exit with one ``Error: ...`` line naming ``needles``, no traceback."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: "), result.stderr
    for needle in needles:
        assert str(needle) in last, (needle, last)
    return last


def scene(w: int = W, h: int = H) -> np.ndarray:
    """CamVid ids in blocks, as an annotator draws them: sky, road, a car."""
    ids = np.full((h, w), 3, np.uint8)
    ids[: h // 3] = 0
    ids[h // 2 : h - 4, w // 4 : w // 2] = 8
    return ids


def camvid(root, train_label: np.ndarray | None = None, image=None):
    """A tiny CamVid in the SegNet layout: one train and one val frame."""
    rng = np.random.default_rng(0)
    for split, stem in (("train", "0001TP_006690"), ("val", "0016E5_07959")):
        os.makedirs(root / split, exist_ok=True)
        os.makedirs(root / f"{split}annot", exist_ok=True)
        picture = image if (image is not None and split == "train") else rng.integers(0, 255, (H, W, 3), np.uint8)
        cv2.imwrite(str(root / split / f"{stem}.png"), picture)
        label = train_label if (train_label is not None and split == "train") else scene()
        cv2.imwrite(str(root / f"{split}annot" / f"{stem}.png"), label)
    return root / "trainannot" / "0001TP_006690.png"


def train_args(data, run_dir):
    return ["train", "--data-source", "camvid", "--data-dir", data, "--width", "0.125", "--image-size",
            f"{W}x{H}", "--batch-size", "1", "--epochs", "1", "--steps-per-epoch", "1", "--image-every", "0",
            "--run-dir", run_dir]


def huge_png(path, w: int = 20000, h: int = 20000) -> None:
    """A real w x h RGB PNG of zeros, streamed through zlib: a few MB on disk, 1.2 GB decoded."""
    z = zlib.compressobj(1)
    row = b"\x00" * (1 + 3 * w)  # filter byte + pixels
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def exif_jpeg(path, rgb: np.ndarray, orientation: int = 6) -> None:
    """A JPEG whose EXIF tag says "rotate 90 degrees" (what phones write)."""
    data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
    tiff = b"MM\x00*" + struct.pack(">IH", 8, 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + b"\0" * 4
    payload = b"Exif\x00\x00" + tiff
    with open(path, "wb") as f:
        f.write(data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:])


@pytest.fixture(scope="module")
def camvid_checkpoint(tmp_path_factory):
    """An untrained tiny LinkNet that predicts CamVid's classes."""
    from fcnseg import checkpoint
    from fcnseg.models import linknet
    from fcnseg.sources.camvid import CLASSES

    path = tmp_path_factory.mktemp("ckpt") / "camvid.keras"
    checkpoint.save(linknet(CLASSES.num_classes, width=0.125), str(path),
                    {"model": "linknet", "config": {},
                     "source": {"name": "camvid", "image_size": [W, H], "classes": CLASSES.to_json()}})
    return path


# ---------------------------------------------------------------- labels check-labels rejects stop training


def _bad_labels():
    value_200 = scene()
    value_200[2:6, 2:6] = 200
    palette = np.array([(128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128)] + [(0, 0, 0)] * 252, np.uint8)
    rgb_mask = palette[scene()]  # the colour rendering saved where the index mask belongs
    small = cv2.resize(scene(), (W // 2, H // 2), interpolation=cv2.INTER_NEAREST)
    bilinear = cv2.resize(small, (W, H), interpolation=cv2.INTER_LINEAR)
    return {"value 200": (value_200, "holds value 200"), "RGB mask": (rgb_mask, "is a RGB PNG"),
            "bilinear": (bilinear, "resized with interpolation")}


@pytest.mark.slow
@pytest.mark.parametrize("case", ["value 200", "RGB mask", "bilinear"])
def test_training_stops_on_labels_check_labels_rejects(tmp_path, case):
    label, why = _bad_labels()[case]
    bad = camvid(tmp_path / "camvid", train_label=label)
    checked = cli("check-labels", "--data-source", "camvid", "--data-dir", tmp_path / "camvid")
    assert checked.returncode == 1 and f"{bad}: " in checked.stdout  # check-labels rejects it...
    result = cli(*train_args(tmp_path / "camvid", tmp_path / "run"))
    one_line_error(result, bad, why)  # ...and so does training, naming the file
    assert not (tmp_path / "run" / "best.keras").exists()


def test_pipeline_refuses_what_check_labels_refuses(tmp_path):
    """The same three labels in-process (fast): each makes the tf.data pipeline fail naming the file."""
    import tensorflow as tf

    from fcnseg import sources

    for case, (label, why) in _bad_labels().items():
        root = tmp_path / case.replace(" ", "_")
        bad = camvid(root, train_label=label)
        source = sources.load("camvid", str(root), image_size=(W, H))
        with pytest.raises(tf.errors.InvalidArgumentError, match=why) as caught:
            list(source.dataset("train", 1))
        assert str(bad) in str(caught.value), case
    clean = sources.load("camvid", str(camvid(tmp_path / "clean").parent.parent), image_size=(W, H))
    assert len(list(clean.dataset("train", 1))) == 1


# ---------------------------------------------------------------- unreadable files, loops, read-only, full disk


@pytest.mark.slow
def test_permission_denied_is_one_line_in_every_command(tmp_path, camvid_checkpoint):
    data = tmp_path / "camvid"
    camvid(data)
    bad = data / "valannot" / "0016E5_07959.png"
    os.chmod(bad, 0)
    os.chmod(tmp_path, 0o777)  # the unprivileged run writes its run dir here
    checked = cli("check-labels", "--data-source", "camvid", "--data-dir", data, priv=True)
    assert checked.returncode == 1 and "Traceback" not in checked.stderr, checked.stderr
    assert f"{bad}: unreadable:" in checked.stdout and "Permission denied" in checked.stdout
    one_line_error(cli(*train_args(data, tmp_path / "run"), priv=True), bad, "Permission denied")
    one_line_error(cli("evaluate", "--checkpoint", camvid_checkpoint, "--data-source", "camvid",
                       "--data-dir", data, priv=True), bad, "Permission denied")


def test_symlink_loop_is_one_line(tmp_path, camvid_checkpoint):
    data = tmp_path / "camvid"
    camvid(data)
    loop = data / "valannot" / "0016E5_07959.png"
    loop.unlink()
    loop.symlink_to(loop.name)  # points at itself
    checked = cli("check-labels", "--data-source", "camvid", "--data-dir", data)
    assert checked.returncode == 1 and "Traceback" not in checked.stderr, checked.stderr
    assert f"{loop}: unreadable:" in checked.stdout and "symbolic links" in checked.stdout
    one_line_error(cli("evaluate", "--checkpoint", camvid_checkpoint, "--data-source", "camvid", "--data-dir", data),
                   loop, "symbolic links")


@pytest.mark.parametrize("role", ["image", "label"])
def test_folder_named_like_a_frame_is_one_line(tmp_path, role):
    """A folder ``train/X.png/`` opened fine in the up-front check, then TF's ReadFile failed mid-epoch."""
    from fcnseg import sources
    from fcnseg.errors import FcnsegError

    data = tmp_path / "camvid"
    camvid(data)
    frame = data / ("train" if role == "image" else "trainannot") / "0001TP_006690.png"
    frame.unlink()
    frame.mkdir()
    with pytest.raises(FcnsegError, match=f"^{frame}: is a folder, not an image file$"):
        sources.load("camvid", str(data)).readable_samples("train")


def test_symlink_loops_are_called_loops(tmp_path):
    """A looping split folder or predict input was reported as missing."""
    from fcnseg import sources
    from fcnseg.errors import FcnsegError
    from fcnseg.files import ensure_writable_dir
    from fcnseg.predict import expand_inputs

    data = tmp_path / "camvid"
    camvid(data)
    shutil.rmtree(data / "train")
    (data / "train").symlink_to("train")
    with pytest.raises(FcnsegError, match=f"{data / 'train'} is a symlink loop"):
        sources.load("camvid", str(data)).samples("train")
    loop = tmp_path / "in.png"
    loop.symlink_to(loop.name)
    assert expand_inputs([str(loop)]) == ([], [(str(loop), f"{loop}: is a symlink loop")])
    with pytest.raises(FcnsegError, match=f"^--output-dir {loop} is a symlink loop$"):
        ensure_writable_dir(str(loop), "--output-dir")


def test_read_only_previews_folder(tmp_path):
    data = tmp_path / "camvid"
    camvid(data)
    previews = tmp_path / "previews"
    previews.mkdir()
    os.chmod(previews, 0o555)
    result = cli("check-labels", "--data-source", "camvid", "--data-dir", data, "--previews", previews, priv=True)
    one_line_error(result, "--previews", previews)
    assert os.listdir(previews) == []


@pytest.fixture
def full_disk(tmp_path):
    """A 256 kB tmpfs, filled up but for a few bytes, holding a previous good result.json."""
    mount = tmp_path / "full"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        (mount / "result.json").write_text('{"previous": "good"}')
        with open(mount / "filler", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_full_disk_under_evaluate_output_and_weights_out(tmp_path, full_disk):
    from fcnseg import checkpoint
    from fcnseg.models import linknet
    from fcnseg.sources.synthetic import SyntheticSource

    ckpt = tmp_path / "tiny.keras"
    checkpoint.save(linknet(6, width=0.125), str(ckpt),
                    {"model": "linknet", "source": SyntheticSource((W, H)).describe(), "config": {}})
    out = full_disk / "result.json"
    result = cli("evaluate", "--checkpoint", ckpt, "--source-option", "val_size=1", "--output", out)
    one_line_error(result, "--output", out)
    assert out.read_text() == '{"previous": "good"}'
    data = tmp_path / "camvid"
    camvid(data)
    result = cli("check-labels", "--data-source", "camvid", "--data-dir", data, "--weights-out", out)
    one_line_error(result, "--weights-out", out)
    assert out.read_text() == '{"previous": "good"}'


# ---------------------------------------------------------------- empty splits and other bad data dirs


def test_check_labels_on_an_empty_split(tmp_path):
    data = tmp_path / "camvid"
    for d in ("train", "trainannot", "val", "valannot"):
        (data / d).mkdir(parents=True)
    (data / "val" / "notes.txt").write_text("not an image")  # non-image files are not samples
    one_line_error(cli("check-labels", "--data-source", "camvid", "--data-dir", data), "train split", data)


@pytest.mark.parametrize("case", ["empty folder", "a file"])
def test_check_labels_on_a_bad_data_dir(tmp_path, case):
    data = tmp_path / "data"
    if case == "a file":
        data.write_text("x")
    else:
        data.mkdir()
    result = cli("check-labels", "--data-source", "camvid", "--data-dir", data)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert str(data) in result.stderr.strip().splitlines()[-1]


def test_non_image_file_named_png_is_reported(tmp_path):
    data = tmp_path / "camvid"
    bad = camvid(data)
    bad.write_text("hello")
    result = cli("check-labels", "--data-source", "camvid", "--data-dir", data)
    assert result.returncode == 1 and f"{bad}: unreadable:" in result.stdout and "not a PNG" in result.stdout


# ---------------------------------------------------------------- huge images


@pytest.fixture(scope="module")
def huge(tmp_path_factory):
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    huge_png(path)
    assert os.path.getsize(path) < 20_000_000  # small on disk, 1.2 GB decoded
    return path


def test_header_sizes():
    from fcnseg import imageio

    png = cv2.imencode(".png", np.zeros((7, 11), np.uint8))[1].tobytes()
    jpg = cv2.imencode(".jpg", np.zeros((7, 11, 3), np.uint8))[1].tobytes()
    bmp = cv2.imencode(".bmp", np.zeros((7, 11, 3), np.uint8))[1].tobytes()
    assert imageio.header_size(png) == imageio.header_size(jpg) == imageio.header_size(bmp) == (11, 7)
    assert imageio.header_size(b"hello") is None


def test_huge_image_is_refused_by_check_labels_without_decoding(tmp_path, huge):
    data = tmp_path / "camvid"
    camvid(data)
    image = data / "train" / "0001TP_006690.png"
    shutil.copy(huge, image)
    # 1 GiB of address space: decoding the 1.2 GB image would fail or be killed.
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30)); "
    cmd = [sys.executable, "-c", limit + "from fcnseg.cli import main; main()", "check-labels",
           "--data-source", "camvid", "--data-dir", str(data), "--workers", "1"]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO}, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"{image}: too large: 20000x20000 pixels is over the limit of 100000000 pixels" in result.stdout
    # The limit is configurable.
    ok = cli("check-labels", "--data-source", "camvid", "--data-dir", data, "--split", "val",
             env={"FCNSEG_MAX_PIXELS": "1e9"})
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = cli("check-labels", "--data-source", "camvid", "--data-dir", data, env={"FCNSEG_MAX_PIXELS": "lots"})
    one_line_error(bad, "FCNSEG_MAX_PIXELS=lots")


def test_huge_image_is_refused_by_the_pipeline_and_predict(tmp_path, huge, camvid_checkpoint):
    import tensorflow as tf

    from fcnseg import sources
    from fcnseg.validate import pipeline_error

    data = tmp_path / "camvid"
    camvid(data)
    image = data / "train" / "0001TP_006690.png"
    shutil.copy(huge, image)
    source = sources.load("camvid", str(data), image_size=(W, H))
    with pytest.raises(tf.errors.InvalidArgumentError, match="over the limit of 100000000 pixels") as caught:
        list(source.dataset("train", 1))
    assert str(image) in caught.value.message
    assert pipeline_error(caught.value, source).startswith(f"{image}: 20000x20000 pixels is over the limit")
    result = cli("predict", "--checkpoint", camvid_checkpoint, "-o", tmp_path / "out", image)
    one_line_error(result, "could not be read", image)
    assert f"{image}: 20000x20000 pixels is over the limit of 100000000 pixels" in result.stderr
    assert os.listdir(tmp_path / "out") == []


# ---------------------------------------------------------------- one decode policy


def test_truncated_and_exif_rotated_jpegs_read_the_same_everywhere(tmp_path):
    import tensorflow as tf

    from fcnseg import data
    from fcnseg.check_labels import Rules, check_sample
    from fcnseg.predict import iter_frames
    from fcnseg.source import Sample
    from fcnseg.sources.camvid import CLASSES

    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:, : W // 2] = (200, 40, 40)
    rgb[: H // 2] += 30
    rotated = tmp_path / "rotated.jpg"
    exif_jpeg(rotated, rgb)
    assert cv2.imread(str(rotated), cv2.IMREAD_COLOR).shape[:2] == (W, H)  # OpenCV alone would turn it
    (_, predicted, error), = iter_frames([str(rotated)])
    trained = data.read_image(tf.constant(str(rotated))).numpy()
    assert error is None and predicted.shape == trained.shape == (H, W, 3)
    np.testing.assert_array_equal(predicted, trained)  # pixel for pixel: both use the accurate integer DCT

    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(rotated.read_bytes()[: -200])
    (_, frame, error), = iter_frames([str(truncated)])
    assert frame is None and error == f"{truncated}: JPEG has no end-of-image marker: truncated"
    with pytest.raises(tf.errors.InvalidArgumentError):
        data.read_image(tf.constant(str(truncated)))
    label = tmp_path / "label.png"
    cv2.imwrite(str(label), scene())
    rules = Rules("index", CLASSES, False, lambda p: CLASSES, lambda s: [])
    result = check_sample(rules, "train", 0, Sample(str(truncated), str(label)), True, False)
    assert [(p.path, p.reason) for p in result.problems] == [(str(truncated), "unreadable")]
    result = check_sample(rules, "train", 0, Sample(str(rotated), str(label)), True, False)
    assert result.problems == []  # raw orientation: 48x32, the label's size
