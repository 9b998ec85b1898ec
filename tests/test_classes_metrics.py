import keras
import numpy as np
import pytest
import tensorflow as tf

from fcnseg.classes import ClassTable, median_frequency_weights, table
from fcnseg.metrics import StreamingIoU, batch_confusion, scores

TABLE = table([("road", 7, 0, (128, 64, 128)), ("car", 26, 1, (0, 0, 142)),
               ("void", 0, 255, (0, 0, 0)), ("ego", 1, 255, (0, 0, 0))])


def test_table_derives_names_colours_and_lookups():
    assert TABLE.class_names == ("road", "car")
    assert TABLE.label_colors == ((128, 64, 128), (0, 0, 142))
    lut = TABLE.id_to_train_id()
    assert lut[7] == 0 and lut[26] == 1 and lut[0] == 255 and lut[1] == 255 and lut[99] == 255
    keys, ids = TABLE.color_keys()
    assert dict(zip(keys.tolist(), ids.tolist())) == {128 * 65536 + 64 * 256 + 128: 0, 142: 1, 0: 255}
    pal = TABLE.palette()
    assert pal[np.array([[0, 1, 255]])].tolist() == [[[128, 64, 128], [0, 0, 142], [0, 0, 0]]]
    assert ClassTable.from_json(TABLE.to_json()) == TABLE


def test_table_rejects_gaps_and_colliding_ignore():
    with pytest.raises(ValueError):
        table([("a", 0, 0, (1, 1, 1)), ("b", 1, 2, (2, 2, 2))])
    with pytest.raises(ValueError):
        # an ignore label inside the class range would silently drop a class
        table([("a", 0, 0, (1, 1, 1)), ("b", 1, 1, (2, 2, 2)), ("c", 2, 2, (3, 3, 3))], ignore_label=1)


def test_confusion_matrix_ignores_void_and_matches_hand_count():
    labels = tf.constant([[0, 0, 1, 255], [1, 2, 2, 9]])
    pred = tf.constant([[0, 1, 1, 0], [1, 2, 0, 1]])
    cm = batch_confusion(labels, pred, 3).numpy()
    # true 0 -> pred 0 once, pred 1 once; true 1 -> 1 twice; true 2 -> 2 once, 0 once; 255 and 9 dropped
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_scores_hand_computed():
    cm = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    s = scores(cm, ["a", "b", "c"])
    # IoU a = 1/(2+2-1)=1/3, b = 2/(2+3-2)=2/3, c = 1/(2+1-1)=1/2
    assert s["per_class"]["a"]["iou"] == pytest.approx(1 / 3)
    assert s["per_class"]["b"]["iou"] == pytest.approx(2 / 3)
    assert s["per_class"]["c"]["iou"] == pytest.approx(1 / 2)
    assert s["mean_iou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert s["pixel_accuracy"] == pytest.approx(4 / 6)
    assert s["mean_accuracy"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    # F1 of a: P = 1/2, R = 1/2 -> 1/2
    assert s["per_class"]["a"]["f1"] == pytest.approx(0.5)


def test_absent_class_is_left_out_of_the_mean():
    cm = np.array([[3, 0, 0], [0, 1, 0], [0, 0, 0]])
    s = scores(cm, ["a", "b", "c"])
    assert s["per_class"]["c"]["iou"] is None
    assert s["mean_iou"] == pytest.approx(1.0)


def test_median_frequency_weights_hand_computed():
    # class 0: 60 px in images totalling 100 px; class 1: 10 of 50; class 2: 5 of 50
    w = median_frequency_weights(np.array([60, 10, 5]), np.array([100, 50, 50]))
    freq = np.array([0.6, 0.2, 0.1])
    assert w == pytest.approx(np.median(freq) / freq)
    assert median_frequency_weights(np.array([5, 0]), np.array([10, 0]))[1] == 0


# --- StreamingIoU, the keras.metrics.Metric ----------------------------------------


def test_streaming_iou_accumulates_one_matrix_over_batches_and_ignores_void():
    rng = np.random.default_rng(0)
    metric = StreamingIoU(3)
    total = np.zeros((3, 3), np.int64)
    for seed in range(3):
        labels = rng.integers(0, 5, (2, 4, 6))  # 3 and 4 are void
        labels[0, 0, 0] = 255
        logits = rng.normal(size=(2, 4, 6, 3)).astype("float32")
        metric.update_state(labels, logits)
        total += batch_confusion(labels, logits, 3).numpy()
    np.testing.assert_array_equal(metric.confusion_matrix(), total)
    expected = scores(total, ["a", "b", "c"])
    # mean IoU of the split's summed matrix, not a mean of per-batch scores
    assert float(metric.result()) == pytest.approx(expected["mean_iou"], rel=1e-6)
    assert metric.scores(["a", "b", "c"]) == expected
    np.testing.assert_allclose(metric.per_class_iou(), [expected["per_class"][n]["iou"] for n in "abc"])
    metric.reset_state()
    assert metric.confusion_matrix().sum() == 0 and float(metric.result()) == 0.0


def test_streaming_iou_counts_past_int32_exactly():
    """A cell carries into the high word at 2**30, so a split of billions of pixels stays exact."""
    metric = StreamingIoU(2)
    metric.counts_low.assign(np.array([[2**30 - 1, 0], [0, 5]], np.int32))
    metric.counts_high.assign(np.array([[3, 0], [0, 0]], np.int32))
    labels = np.array([[0, 0, 0, 1, 255]])
    metric.update_state(labels, np.array([[0, 0, 0, 0, 1]]))  # ids, not logits
    assert metric.confusion_matrix().tolist() == [[4 * 2**30 + 2, 0], [1, 5]]
    assert int(np.asarray(metric.counts_low).max()) < 2**30
    assert float(metric.result()) == pytest.approx(scores(metric.confusion_matrix())["mean_iou"], rel=1e-6)


def test_streaming_iou_round_trips_its_config():
    metric = keras.metrics.deserialize(keras.metrics.serialize(StreamingIoU(7, name="val_iou")))
    assert type(metric) is StreamingIoU and metric.num_classes == 7 and metric.name == "val_iou"
