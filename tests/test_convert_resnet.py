"""tools/convert_torchvision_resnet.py against a torchvision-compatible ResNet in torch."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch not installed: torchvision conversion not tested")
from torch import nn  # noqa: E402

from fcnseg.models import linknet  # noqa: E402
from fcnseg.models.resnet import resnet18  # noqa: E402

TOOL = Path(__file__).resolve().parents[1] / "tools" / "convert_torchvision_resnet.py"


def _load_tool():
    spec = importlib.util.spec_from_file_location("convert_torchvision_resnet", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


conv = _load_tool()


class BasicBlock(nn.Module):
    """torchvision.models.resnet.BasicBlock (same module names)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class TorchResNet(nn.Module):
    """torchvision.models.resnet18/34 layout; forward returns layer1..layer4."""

    def __init__(self, depths=(2, 2, 2, 2)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (n, cout) in enumerate(zip(depths, (64, 128, 256, 512)), start=1):
            blocks = [BasicBlock(cin if b == 0 else cout, cout, 2 if i > 1 and b == 0 else 1) for b in range(n)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            cin = cout
        self.fc = nn.Linear(512, 1000)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            feats.append(x)
        return feats


def _random_resnet(depths=(2, 2, 2, 2), seed=0):
    torch.manual_seed(seed)
    model = TorchResNet(depths)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # non-trivial stats, all four params differ
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def converted18(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tv")
    model = _random_resnet()
    src = tmp / "resnet18.pth"
    torch.save(model.state_dict(), src)
    out = conv.convert_file(str(src), "resnet18", str(tmp / "resnet18_encoder.weights.h5"))
    return model, out


def test_converted_resnet18_matches_torch(converted18):
    model, path = converted18
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 64, 96, 3)).astype("float32")
    with torch.no_grad():
        expected = [t.numpy().transpose(0, 2, 3, 1) for t in model(torch.from_numpy(x.transpose(0, 3, 1, 2)))]
    encoder = resnet18()
    encoder.load_weights(path)
    got = [np.asarray(t) for t in encoder(x, training=False)]
    for stage, (g, e) in enumerate(zip(got, expected), start=1):
        assert g.shape == e.shape, stage
        rel = np.abs(g - e).max() / np.abs(e).max()
        assert rel < 1e-4, f"layer{stage}: max relative error {rel:.2e}"


def test_linknet_loads_converted_encoder(converted18):
    _, path = converted18
    encoder = resnet18()
    encoder.load_weights(path)
    got = linknet(12, encoder_weights=path).get_layer("resnet18").get_weights()
    want = encoder.get_weights()
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def _one_line(exc_info, *needles):
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg


def test_resnet34_declared_as_resnet18_names_the_key(tmp_path):
    src = tmp_path / "resnet34.pth"
    torch.save(_random_resnet((3, 4, 6, 3)).state_dict(), src)
    with pytest.raises(conv.ConversionError) as e:
        conv.convert_file(str(src), "resnet18", str(tmp_path / "x.weights.h5"))
    _one_line(e, "resnet18", "unexpected key layer1.2.")
    sd18 = _random_resnet().state_dict()
    with pytest.raises(conv.ConversionError) as e:
        conv.state_dict_to_keras(sd18, "resnet34")
    _one_line(e, "missing key layer1.2.conv1.weight")
    sd18["layer2.0.conv1.weight"] = sd18["layer2.0.conv1.weight"][:, :32]
    with pytest.raises(conv.ConversionError) as e:
        conv.state_dict_to_keras(sd18, "resnet18")
    _one_line(e, "layer2.0.conv1.weight", "shape")


def test_not_a_state_dict_and_missing_file(tmp_path):
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], listed)
    with pytest.raises(conv.ConversionError) as e:
        conv.convert_file(str(listed), "resnet18", str(tmp_path / "x.weights.h5"))
    _one_line(e, "not a state_dict")
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not a torch file\n")
    with pytest.raises(conv.ConversionError) as e:
        conv.convert_file(str(garbage), "resnet18", str(tmp_path / "x.weights.h5"))
    _one_line(e, "could not read")
    with pytest.raises(conv.ConversionError) as e:
        conv.convert_file(str(tmp_path / "nope.pth"), "resnet18", str(tmp_path / "x.weights.h5"))
    _one_line(e, "not found")
    assert conv.main([str(tmp_path / "nope.pth"), "--arch", "resnet18", "--output", "x.weights.h5"]) == 1
