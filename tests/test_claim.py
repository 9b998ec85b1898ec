"""`fcnseg predict --claim CLASS=P`: the Lyft write-up's low car threshold (a pixel is car wherever
P(car) >= P, even where another class is more likely), next to --threshold (a class below it cannot win)."""

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from fcnseg.cli import main


def probs_map():
    """3 classes (background, road, car) on a 1x4 strip: road leads everywhere, car at 0.35 / 0.25 / 0.1 / 0.3."""
    p = np.zeros((1, 1, 4, 3), np.float32)
    p[0, 0, :, 2] = [0.35, 0.25, 0.1, 0.3]
    p[0, 0, :, 1] = 0.6
    p[0, 0, :, 0] = 1.0 - p[0, 0, :, 1] - p[0, 0, :, 2]
    return p


def test_a_claim_takes_pixels_from_a_more_likely_class():
    from fcnseg.predict import PostProcess, postprocess

    p = probs_map()
    assert (postprocess(p, PostProcess(), 255).numpy() == 1).all()  # argmax: road everywhere
    # --threshold car=0.3 only stops car winning below 0.3: it never wins here, road leads
    assert (postprocess(p, PostProcess(thresholds=(0.0, 0.0, 0.3)), 255).numpy() == 1).all()
    labels = postprocess(p, PostProcess(claims=((2, 0.3),)), 255).numpy()[0, 0]
    np.testing.assert_array_equal(labels, [2, 1, 1, 2])  # >= 0.3 is car
    # a claim also takes pixels that thresholds made void, and comes before morphology
    labels = postprocess(p, PostProcess(thresholds=(1.0, 1.0, 1.0), claims=((2, 0.3),)), 255).numpy()[0, 0]
    np.testing.assert_array_equal(labels, [2, 255, 255, 2])
    labels = postprocess(p, PostProcess(claims=((2, 0.3),), morphology=((2, "dilate", 3),)), 255).numpy()[0, 0]
    np.testing.assert_array_equal(labels, [2, 2, 2, 2])
    # claims apply in order: the later one wins an overlap
    labels = postprocess(p, PostProcess(claims=((2, 0.3), (0, 0.04))), 255).numpy()[0, 0]
    np.testing.assert_array_equal(labels, [0, 0, 0, 0])


def test_claim_on_the_command_line(tmp_path):
    import keras

    from fcnseg import checkpoint
    from fcnseg.models import linknet
    from fcnseg.sources.synthetic import make_source, render_scene

    keras.utils.set_random_seed(0)
    source = make_source(image_size=(48, 32))
    ckpt = tmp_path / "best.keras"
    checkpoint.save(linknet(source.num_classes, width=0.125), str(ckpt),
                    {"model": "linknet", "source": source.describe(), "config": {"width": 0.125}})
    cv2.imwrite(str(tmp_path / "a.png"), render_scene(48, 32, 1)[0][..., ::-1])
    car = source.class_names.index("car")

    def predict(*extra):
        return CliRunner().invoke(main, ["predict", "--checkpoint", str(ckpt), str(tmp_path / "a.png"),
                                         "-o", str(tmp_path / "out"), *extra])

    result = predict("--claim", "car=0")
    assert result.exit_code == 0, result.output
    assert (cv2.imread(str(tmp_path / "out" / "a_label.png"), cv2.IMREAD_UNCHANGED) == car).all()
    for bad, message in (("car=1.5", "--claim car=1.5: a probability must be in 0..1"),
                         ("tree=0.3", "--claim 'tree': no such class"), ("car", "--claim")):
        result = predict("--claim", bad)
        assert result.exit_code != 0 and message in result.output, result.output
        assert "Traceback" not in result.output
