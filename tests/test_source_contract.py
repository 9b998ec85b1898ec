"""The source contract is written once (``fcnseg.source``'s docstring and ``Source``) and is true:
the docstring's own examples, copied verbatim into a source file, train, evaluate and pass
check-labels from the CLI; ``sources.load`` refuses what the commands could not use."""

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

import fcnseg.source
from fcnseg import sources
from fcnseg.errors import FcnsegError
from fcnseg.source import CONTRACT

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--width", "0.125", "--batch-size", "2", "--steps-per-epoch", "1", "--val-steps", "1", "--epochs", "1",
        "--image-every", "0"]


def doc_example(title: str) -> str:
    """The literal block after the docstring paragraph that says ``title`` (ended by '::')."""
    doc = fcnseg.source.__doc__
    start = doc.index("::\n", doc.index(title)) + 3
    block = []
    for line in doc[start:].splitlines():
        if line.strip() and not line.startswith("    "):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block))


def fcnseg_cli(*args: str) -> subprocess.CompletedProcess:
    # From the checkout root, as `python -m fcnseg.cli` is documented to run.
    return subprocess.run([sys.executable, "-m", "fcnseg.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def write_puddles(root: Path, n: int = 8) -> None:
    """images/NAME.png + labels/NAME.png index masks (ground 0, puddle 1, void 255) in 4x4 blocks."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        label = np.kron(rng.choice([0, 1, 255], (12, 16), p=[0.6, 0.3, 0.1]), np.ones((4, 4))).astype(np.uint8)
        image = np.where(label[..., None] == 1, 200, 60).astype(np.uint8).repeat(3, -1)
        assert cv2.imwrite(str(root / "images" / f"{i:03d}.png"), image)
        assert cv2.imwrite(str(root / "labels" / f"{i:03d}.png"), label)


@pytest.fixture(scope="module")
def puddles(tmp_path_factory):
    """(source file, data dir): the files-on-disk example exactly as documented."""
    root = tmp_path_factory.mktemp("puddles")
    path = root / "puddles.py"
    path.write_text(doc_example("Example, files on disk"))
    write_puddles(root / "data")
    return str(path), str(root / "data")


@pytest.mark.slow
def test_documented_file_source_trains_evaluates_and_is_checked(puddles, tmp_path):
    path, data_dir = puddles
    run_dir = tmp_path / "run"
    out = fcnseg_cli("train", "--data-source", path, "--data-dir", data_dir, *TINY, "--run-dir", str(run_dir))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert (run_dir / "best.keras").is_file()

    out = fcnseg_cli("evaluate", "--checkpoint", str(run_dir / "best.keras"), "--data-source", path,
                     "--data-dir", data_dir)
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(r"^puddle\s", out.stdout, re.M) and "(2 images" in out.stdout  # a quarter of 8 held out

    out = fcnseg_cli("check-labels", "--data-source", path, "--data-dir", data_dir)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "OK: 16 files" in out.stdout


def test_documented_file_source_check_labels_reports_every_problem(puddles, tmp_path):
    import shutil

    path, data_dir = puddles
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    cv2.imwrite(str(data / "images" / "lonely.png"), np.zeros((48, 64, 3), np.uint8))  # no label
    cv2.imwrite(str(data / "labels" / "ghost.png"), np.zeros((48, 64), np.uint8))  # no image
    bad = np.zeros((48, 64), np.uint8)
    bad[:8, :8] = 7  # not an id of the class table
    cv2.imwrite(str(data / "labels" / "003.png"), bad)
    out = fcnseg_cli("check-labels", "--data-source", path, "--data-dir", str(data))
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    # all three, not just the first unpaired file: the source is built to collect orphans
    for name in ("lonely.png", "ghost.png", "003.png"):
        assert name in out.stdout, name
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_documented_generated_source_trains_and_evaluates(tmp_path):
    path = tmp_path / "stripes.py"
    path.write_text(doc_example("Example, generated data"))
    run_dir = tmp_path / "run"
    out = fcnseg_cli("train", "--data-source", str(path), *TINY, "--run-dir", str(run_dir))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    out = fcnseg_cli("evaluate", "--checkpoint", str(run_dir / "best.keras"), "--data-source", str(path))
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(r"^light\s", out.stdout, re.M) and "(4 images" in out.stdout
    out = fcnseg_cli("check-labels", "--data-source", str(path))
    assert out.returncode != 0 and "Error:" in out.stderr and "the stripes source has none" in out.stderr
    assert "Traceback" not in out.stderr


def test_documented_examples_keep_the_contract(puddles, tmp_path):
    """Loaded as the commands load them, every contract name answers, with the documented types."""
    stripes = tmp_path / "stripes.py"
    stripes.write_text(doc_example("Example, generated data"))
    for source in (sources.load(puddles[0], puddles[1]), sources.load(str(stripes), image_size=(24, 16))):
        assert [n for n in CONTRACT if not hasattr(source, n)] == []
        images, labels = next(source.train_generator(2))
        w, h = source.image_size
        assert images.shape == (2, h, w, 3) and images.dtype == np.float32 and labels.dtype == np.int32
        assert set(np.unique(labels)) <= set(range(source.num_classes)) | {source.ignore_label}
        assert source.describe()["classes"] == source.classes.to_json()


def _names_used_on_sources() -> dict[str, set[str]]:
    """{name: files} for every ``source.NAME`` / ``getattr(source, "NAME"`` outside the sources."""
    used: dict[str, set[str]] = {}
    pattern = re.compile(r"\bsource\.([A-Za-z_]\w*)|(?:getattr|hasattr)\(source, \"(\w+)\"")
    files = [p for p in (ROOT / "fcnseg").rglob("*.py")
             if p.name != "source.py" and "sources" not in p.relative_to(ROOT).parts]
    for p in files + list((ROOT / "tools").glob("*.py")):
        for m in pattern.finditer(p.read_text(encoding="utf-8")):
            used.setdefault(m.group(1) or m.group(2), set()).add(p.name)
    return used


def test_contract_names_everything_the_commands_use(puddles):
    """What fcnseg calls on a source is the contract, or (check-labels only) a FileSource member:
    a source written to the contract never loads and then crashes on a name nobody documented."""
    file_source = sources.load(puddles[0], puddles[1])
    file_only = set(dir(file_source)) - set(dir(fcnseg.source.DataSource))
    used = _names_used_on_sources()
    assert {"dataset", "elements", "split_size", "describe"} <= set(used)  # the scan finds the calls
    undocumented = {n: sorted(f) for n, f in used.items() if n not in CONTRACT and n not in file_only}
    assert undocumented == {}


OLD_DOCSTRING_SOURCE = """
from fcnseg.sources.synthetic import CLASSES

class Old:
    # every name the previous docstring asked for, and nothing else
    name, classes, image_size = "old", CLASSES, (32, 32)
    num_classes, class_names = CLASSES.num_classes, CLASSES.class_names
    label_colors, ignore_label = CLASSES.label_colors, CLASSES.ignore_label
    num_training = num_validation = 4
    def train_dataset(self, batch_size): ...
    def valid_dataset(self, batch_size): ...
    def train_generator(self, batch_size): ...
    def valid_generator(self, batch_size): ...

def make_source(data_dir, image_size=None, seed=0):
    return Old()
"""


def test_a_source_missing_contract_names_is_refused_at_load(tmp_path):
    path = tmp_path / "old.py"
    path.write_text(OLD_DOCSTRING_SOURCE)
    with pytest.raises(FcnsegError) as err:
        sources.load(str(path))
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    for name in ("split_size", "elements", "dataset", "describe"):
        assert name in message


def test_a_subclass_without_its_abstract_method_is_refused_at_load(puddles, tmp_path):
    text = doc_example("Example, files on disk").replace("def samples(", "def sample_list(")
    path = tmp_path / "incomplete.py"
    path.write_text(text)
    with pytest.raises(FcnsegError, match=r"--data-source .*incomplete\.py: .*abstract.*samples"):
        sources.load(str(path), puddles[1])


def test_classes_must_be_a_class_table(tmp_path):
    path = tmp_path / "loose.py"
    path.write_text(doc_example("Example, generated data").replace('classes = table(', 'classes = list(('))
    path.write_text(path.read_text().replace('(255, 255, 255))])', '(255, 255, 255))]))'))
    with pytest.raises(FcnsegError, match="classes is a list, not a ClassTable"):
        sources.load(str(path))
