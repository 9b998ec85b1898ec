"""`fcnseg evaluate` and the metrics behind it, checked against independent implementations."""

import json
import os

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from fcnseg.cli import main
from fcnseg.metrics import kitti_scores, scores


def devkit_max_f_ap(gt_road, prob, valid):
    """The KITTI road devkit's evalExp + pxEval_maximizeFMeasure, transcribed in plain numpy."""
    thresh = np.array(range(0, 256)) / 255.0
    edges = np.concatenate(([-np.inf], thresh, [np.inf]))
    fn = np.cumsum(np.histogram(prob[gt_road & valid], bins=edges)[0])[: len(thresh)]
    fp = np.flipud(np.cumsum(np.flipud(np.histogram(prob[~gt_road & valid], bins=edges)[0])))[1: 1 + len(thresh)]
    pos = np.sum(gt_road & valid)
    tp = pos - fn
    recall = tp / float(pos)
    precision = tp / (tp + fp + 1e-10)
    keep = ~((recall == 0) & (precision == 0))
    recall, precision = recall[keep], precision[keep]
    ap = np.mean([max(precision[np.where(recall >= i)]) for i in np.arange(0, 1.1, 0.1)])
    f = 2 * precision * recall / (precision + recall + 1e-10)
    return f.max(), ap


def test_kitti_maxf_and_ap_match_the_devkit():
    rng = np.random.default_rng(0)
    gt = rng.random((60, 80)) < 0.4
    prob8 = np.clip(np.where(gt, rng.normal(170, 50, gt.shape), rng.normal(80, 60, gt.shape)), 0, 255).astype(np.uint8)
    valid = rng.random(gt.shape) > 0.1
    max_f, ap = devkit_max_f_ap(gt, prob8 / 255.0, valid)
    ours = kitti_scores(np.bincount(prob8[gt & valid], minlength=256), np.bincount(prob8[~gt & valid], minlength=256))
    assert ours["max_f"] == pytest.approx(max_f, abs=1e-9)
    assert ours["average_precision"] == pytest.approx(ap, abs=1e-9)


def test_metrics_match_cityscapes_scripts(tmp_path):
    pytest.importorskip("cityscapesscripts")
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs
    from cityscapesscripts.helpers.labels import labels as cs_labels

    from fcnseg.sources.cityscapes import CLASSES

    rng = np.random.default_rng(1)
    ids = np.array([r.id for r in CLASSES.rows if r.id >= 0])
    lut = CLASSES.id_to_train_id()
    train_to_id = {r.train_id: r.id for r in CLASSES.rows if r.train_id != 255}
    cm = np.zeros((19, 19), np.int64)
    preds, gts = [], []
    for i in range(3):
        gt_ids = rng.choice(ids, size=(40, 64)).astype(np.uint8)
        gt_train = lut[gt_ids]
        # a prediction that is right 60% of the time, else a random train id
        pred_train = np.where(rng.random(gt_ids.shape) < 0.6, np.where(gt_train == 255, 0, gt_train),
                              rng.integers(0, 19, gt_ids.shape))
        valid = gt_train != 255
        cm += np.bincount(gt_train[valid] * 19 + pred_train[valid], minlength=361).reshape(19, 19)
        g, p = tmp_path / f"f{i}_gtFine_labelIds.png", tmp_path / f"f{i}_pred.png"
        cv2.imwrite(str(g), gt_ids)
        cv2.imwrite(str(p), np.vectorize(train_to_id.get)(pred_train).astype(np.uint8))
        gts.append(str(g))
        preds.append(str(p))
    args = cs.args
    args.evalInstLevelScore, args.quiet, args.JSONOutput = False, True, False
    args.evalLabels = [l.id for l in cs_labels if l.id >= 0 and not l.ignoreInEval] + \
                      [l.id for l in cs_labels if l.id >= 0 and l.ignoreInEval]
    result = cs.evaluateImgLists(preds, gts, args)
    ours = scores(cm, CLASSES.class_names)
    for name in CLASSES.class_names:
        assert ours["per_class"][name]["iou"] == pytest.approx(result["classScores"][name], abs=1e-9), name
    assert ours["mean_iou"] == pytest.approx(result["averageScoreClasses"], abs=1e-9)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from fcnseg import checkpoint
    from fcnseg.models import linknet
    from fcnseg.sources.synthetic import SyntheticSource

    import keras

    keras.utils.set_random_seed(3)
    model = linknet(6, width=0.125)
    source = SyntheticSource((48, 32))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.keras"
    checkpoint.save(model, str(path), {"model": "linknet", "source": source.describe(), "config": {}})
    return path, model


def _run(*args):
    return CliRunner().invoke(main, list(args))


def test_evaluate_matches_an_independent_computation(tiny_checkpoint, tmp_path):
    import tensorflow as tf

    from fcnseg.sources.synthetic import SyntheticSource

    path, model = tiny_checkpoint
    out = tmp_path / "eval.json"
    result = _run("evaluate", "--checkpoint", str(path), "--source-option", "val_size=3", "--output", str(out))
    assert result.exit_code == 0, result.output
    for name in ("sky", "road", "car", "mean", "pixel accuracy"):
        assert name in result.output
    got = json.loads(out.read_text())
    # Independent: the source's default size is 160x128; the model runs at its training size 48x32.
    src = SyntheticSource(None, 0, val_size=3)
    cm = np.zeros((6, 6), np.int64)
    for i in range(3):
        image, label = src.scene("val", i)
        small = tf.image.resize(image[None].astype(np.float32), (32, 48), antialias=True)
        probs = tf.nn.softmax(model(small, training=False))
        pred = tf.image.resize(probs, label.shape, method="bilinear")[0].numpy().argmax(-1)
        v = label < 6
        cm += np.bincount(label[v].astype(int) * 6 + pred[v], minlength=36).reshape(6, 6)
    assert np.array_equal(np.array(got["confusion_matrix"]), cm)
    assert got["mean_iou"] == pytest.approx(scores(cm)["mean_iou"])
    assert got["images"] == 3


def test_evaluate_iterates_without_the_autotune_model_thread(tiny_checkpoint, monkeypatch):
    # fcnseg evaluate's one pass ends by deleting its iterator, which waits out the autotuning
    # model thread's sleep when there is one (see fcnseg.data.without_autotune_model).
    import tensorflow as tf

    from fcnseg.evaluate import EvaluateConfig, evaluate

    seen = []
    original = tf.data.Dataset.as_numpy_iterator

    def spy(self):
        seen.append(self.options().autotune.enabled)
        return original(self)

    monkeypatch.setattr(tf.data.Dataset, "as_numpy_iterator", spy)
    path, _ = tiny_checkpoint
    result = evaluate(EvaluateConfig(str(path), "synthetic", None, source_options={"val_size": 2}),
                      log=lambda _: None)
    assert result["images"] == 2
    assert seen == [False]


def test_evaluate_options_flip_window_native(tiny_checkpoint, tmp_path):
    path, _ = tiny_checkpoint
    for extra in (["--flip"], ["--window", "64x48"], ["--size", "native"]):
        result = _run("evaluate", "--checkpoint", str(path), "--source-option", "val_size=2", *extra)
        assert result.exit_code == 0, (extra, result.output)
        assert "mean" in result.output


def test_evaluate_binary_task_reports_kitti_figures(tmp_path):
    from fcnseg import checkpoint
    from fcnseg.classes import table
    from fcnseg.models import linknet

    src = tmp_path / "binary.py"
    src.write_text(
        "from fcnseg.classes import table\n"
        "from fcnseg.sources.synthetic import SyntheticSource\n"
        "class Road(SyntheticSource):\n"
        "    classes = table([('background', 0, 0, (255, 0, 0)), ('road', 1, 1, (255, 0, 255))])\n"
        "    def elements(self, split, shuffle=False, seed=0):\n"
        "        return super().elements(split, shuffle, seed).map(lambda i, l: (i, (l == 3) | (l == 4)))"
        ".map(lambda i, l: (i, __import__('tensorflow').cast(l, 'int32')))\n"
        "def make_source(data_dir, image_size=None, seed=0, val_size=2):\n"
        "    return Road(image_size, seed, val_size=int(val_size))\n"
    )
    ckpt = tmp_path / "road.keras"
    classes = table([("background", 0, 0, (255, 0, 0)), ("road", 1, 1, (255, 0, 255))])
    checkpoint.save(linknet(2, width=0.125), str(ckpt),
                    {"model": "linknet", "source": {"name": "road", "image_size": [48, 32],
                                                    "classes": classes.to_json()}, "config": {}})
    result = _run("evaluate", "--checkpoint", str(ckpt), "--data-source", str(src))
    assert result.exit_code == 0, result.output
    assert "KITTI (perspective): MaxF" in result.output


def test_evaluate_bad_inputs(tiny_checkpoint, tmp_path):
    path, _ = tiny_checkpoint
    notckpt = tmp_path / "x.keras"
    notckpt.write_text("hello")
    result = _run("evaluate", "--checkpoint", str(notckpt))
    assert result.exit_code != 0 and "is not an fcnseg checkpoint" in result.output
    result = _run("evaluate", "--checkpoint", str(tmp_path / "missing.keras"))
    assert result.exit_code != 0 and "no such file" in result.output
    result = _run("evaluate", "--checkpoint", str(path), "--split", "nope")
    assert result.exit_code != 0 and "--split nope" in result.output
    result = _run("evaluate", "--checkpoint", str(path), "--output", str(tmp_path / "nope" / "r.json"))
    assert result.exit_code != 0 and "--output" in result.output
    camvid = tmp_path / "camvid"
    for d in ("train", "trainannot", "val", "valannot"):
        (camvid / d).mkdir(parents=True)
    cv2.imwrite(str(camvid / "val" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    cv2.imwrite(str(camvid / "valannot" / "a.png"), np.zeros((8, 8), np.uint8))
    result = _run("evaluate", "--checkpoint", str(path), "--data-source", "camvid", "--data-dir", str(camvid))
    assert result.exit_code != 0 and "predicts 6 classes" in result.output and "camvid" in result.output


def _cityscapes_checkpoint(path, size=(32, 16)):
    from fcnseg import checkpoint
    from fcnseg.models import linknet
    from fcnseg.sources.cityscapes import CLASSES

    import keras

    keras.utils.set_random_seed(5)
    model = linknet(CLASSES.num_classes, width=0.125)
    checkpoint.save(model, str(path), {"model": "linknet", "config": {}, "source": {
        "name": "cityscapes", "image_size": list(size), "classes": CLASSES.to_json()}})
    return model


def _independent_confusion(model, images, labels, train_size):
    """Probabilities at the training size, upsampled bilinearly to each label's own size."""
    import tensorflow as tf

    from fcnseg.sources.cityscapes import CLASSES

    lut, n = CLASSES.id_to_train_id(256), CLASSES.num_classes
    cm = np.zeros((n, n), np.int64)
    for image, ids in zip(images, labels):
        small = tf.image.resize(image[None].astype(np.float32), train_size[::-1], antialias=True)
        probs = tf.nn.softmax(model(small, training=False))
        pred = tf.image.resize(probs, ids.shape, method="bilinear")[0].numpy().argmax(-1)
        gt = lut[ids]
        v = gt < n
        cm += np.bincount(gt[v].astype(int) * n + pred[v], minlength=n * n).reshape(n, n)
    return cm


def test_evaluate_scores_cityscapes_labels_at_their_own_resolution(tmp_path):
    """Labels twice their images' size (the artyze layout): every label pixel is scored."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for k, stem in enumerate(["aachen_000000_000019", "aachen_000001_000019"]):
        image = rng.integers(0, 255, (24, 40, 3), np.uint8)
        ids = np.kron(rng.choice([7, 8, 11, 26, 0], (12, 20)), np.ones((4, 4), int)).astype(np.uint8)  # 80x48
        for folder, name, array in (("leftImg8bit", "leftImg8bit", image[..., ::-1]),
                                    ("gtFine", "gtFine_labelIds", ids)):
            os.makedirs(tmp_path / folder / "val" / "aachen", exist_ok=True)
            cv2.imwrite(str(tmp_path / folder / "val" / "aachen" / f"{stem}_{name}.png"), array)
        images.append(image)
        labels.append(ids)
    model = _cityscapes_checkpoint(tmp_path / "cs.keras")
    out = tmp_path / "eval.json"
    result = _run("evaluate", "--checkpoint", str(tmp_path / "cs.keras"), "--data-source", "cityscapes",
                  "--data-dir", str(tmp_path), "--output", str(out))
    assert result.exit_code == 0, result.output
    got = np.array(json.loads(out.read_text())["confusion_matrix"])
    non_void = sum(int(((ids != 0)).sum()) for ids in labels)  # id 0 (unlabeled) is void
    assert got.sum() == non_void  # label resolution: 80x48 per frame, not the images' 40x24
    np.testing.assert_array_equal(got, _independent_confusion(model, images, labels, (32, 16)))


def test_camvid_recipe_uses_the_split_size_and_fcnseg_evaluate(tmp_path):
    """tools/camvid_recipe.py counts the train split (no hard-coded 367) and scores with fcnseg.evaluate."""
    import importlib.util
    import types

    from fcnseg import checkpoint
    from fcnseg.evaluate import EvaluateConfig, evaluate
    from fcnseg.models import linknet
    from fcnseg.sources.camvid import CLASSES

    spec = importlib.util.spec_from_file_location(
        "camvid_recipe", os.path.join(os.path.dirname(__file__), "..", "tools", "camvid_recipe.py"))
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    rng = np.random.default_rng(0)
    data = tmp_path / "camvid"
    for split, n in (("train", 5), ("val", 2)):
        os.makedirs(data / split)
        os.makedirs(data / f"{split}annot")
        for i in range(n):
            cv2.imwrite(str(data / split / f"{split}{i}.png"), rng.integers(0, 255, (24, 32, 3), np.uint8))
            label = np.full((24, 32), 3, np.uint8)  # road, a car block and a void strip
            label[8:20, 4 + i:16 + i], label[:4] = 8, 11
            cv2.imwrite(str(data / f"{split}annot" / f"{split}{i}.png"), label)
    assert recipe.train_steps_per_epoch(str(data), 2) == 3 and recipe.train_steps_per_epoch(str(data), 8) == 1

    ckpt = str(tmp_path / "last.keras")
    checkpoint.save(linknet(CLASSES.num_classes, width=0.125), ckpt,
                    {"model": "linknet", "source": {"name": "camvid", "image_size": [16, 12],
                                                    "classes": CLASSES.to_json()}})
    args = types.SimpleNamespace(data_dir=str(data), out=str(tmp_path))
    got = recipe.evaluate_val(args, ckpt, log=lambda _: None)
    expected = evaluate(EvaluateConfig(ckpt, "camvid", str(data), split="val"), log=lambda _: None)
    assert got["images"] == 2 and got["confusion_matrix"] == expected["confusion_matrix"]
    assert got["protocol"] == expected["protocol"]
    with open(tmp_path / "evaluate.json") as f:
        assert json.load(f)["mean_iou"] == got["mean_iou"]
