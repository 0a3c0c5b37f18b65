"""The published deep-lip-reading front-end, loaded exactly.

``Published*`` below is an independent reimplementation of the published architecture,
written here from its description (issue 11) in the published module and parameter names
(``frontend3D`` Sequential, ``resnet.layer1..4`` with units a/b), so that its
``state_dict()`` is what a ``visual_frontend.pt`` holds. Our ``dlr`` front-end must give the
same outputs from it, through the converter.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from avse.models.frontends import DLRFrontend, frontend_info, load_frontend
from avse.models.reference.dlr import convert_reference_state_dict, to_reference_state_dict
from avse.models.registry import build

MEAN, STD = 0.4161, 0.1688


def bn2d(planes):
    return nn.BatchNorm2d(planes, eps=1e-3, momentum=0.01)


class PublishedResLayer(nn.Module):
    """Two residual units (a, b); the sum is taken before each unit's out-BN."""

    def __init__(self, inplanes, outplanes, stride):
        super().__init__()
        self.conv1a = nn.Conv2d(inplanes, outplanes, 3, stride=stride, padding=1, bias=False)
        self.bn1a = bn2d(outplanes)
        self.conv2a = nn.Conv2d(outplanes, outplanes, 3, stride=1, padding=1, bias=False)
        self.stride = stride
        self.downsample = nn.Conv2d(inplanes, outplanes, 1, stride=stride, bias=False)
        self.outbna = bn2d(outplanes)
        self.conv1b = nn.Conv2d(outplanes, outplanes, 3, stride=1, padding=1, bias=False)
        self.bn1b = bn2d(outplanes)
        self.conv2b = nn.Conv2d(outplanes, outplanes, 3, stride=1, padding=1, bias=False)
        self.outbnb = bn2d(outplanes)

    def forward(self, x):
        out = self.conv2a(F.relu(self.bn1a(self.conv1a(x))))
        residual = x if self.stride == 1 else self.downsample(x)
        out = out + residual
        summed = out
        out = F.relu(self.outbna(out))
        out = self.conv2b(F.relu(self.bn1b(self.conv1b(out))))
        out = out + summed
        return F.relu(self.outbnb(out))


class PublishedResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer1 = PublishedResLayer(64, 64, 1)
        self.layer2 = PublishedResLayer(64, 128, 2)
        self.layer3 = PublishedResLayer(128, 256, 2)
        self.layer4 = PublishedResLayer(256, 512, 2)
        self.avgpool = nn.AvgPool2d(4, stride=1)

    def forward(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).view(x.size(0), -1)


class PublishedVisualFrontend(nn.Module):
    """Input: normalised gray clips ``[B, 1, T, 112, 112]``; output ``[B, T, 512]``."""

    def __init__(self):
        super().__init__()
        self.frontend3D = nn.Sequential(
            nn.Conv3d(1, 64, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=(2, 3, 3),
                      bias=False),
            nn.BatchNorm3d(64, eps=1e-3, momentum=0.01),
            nn.ReLU(True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)))
        self.resnet = PublishedResNet()

    def forward(self, x):
        b, t = x.size(0), x.size(2)
        x = self.frontend3D(x).transpose(1, 2).contiguous()
        x = x.view(b * t, 64, x.size(3), x.size(4))
        return self.resnet(x).view(b, t, 512)


def published_input(frames):
    """The published preprocessing after cropping: /255, then (x - mean) / std."""
    return ((frames.float() / 255.0 - MEAN) / STD).unsqueeze(1)


def make_published(seed=0):
    """Random weights and non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    net = PublishedVisualFrontend()
    g = torch.Generator().manual_seed(seed + 1)
    for m in net.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
            m.num_batches_tracked.fill_(1234)
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
    return net.eval()


def clip(t=3, b=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, 112, 112), dtype=torch.uint8, generator=g)


@pytest.fixture(scope="module")
def published():
    return make_published()


@pytest.fixture(scope="module")
def reference_out(published):
    with torch.no_grad():
        return published(published_input(clip()))


def max_rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_the_published_state_dict_has_the_published_names(published):
    keys = set(published.state_dict())
    assert {"frontend3D.0.weight", "frontend3D.1.num_batches_tracked",
            "resnet.layer1.downsample.weight", "resnet.layer4.outbnb.running_var"} <= keys
    assert len(keys) == 1 + 5 + 4 * (5 + 4 * 5)  # per layer: 4 convs + downsample, 4 BNs


def test_converted_published_weights_give_the_same_outputs(published, reference_out, tmp_path):
    path = tmp_path / "visual_frontend.pt"
    torch.save(published.state_dict(), path)
    fe = load_frontend(str(path))
    assert isinstance(fe, DLRFrontend) and not fe.training and fe.preset == "lipread"
    with torch.no_grad():
        ours = fe(clip())
        ours_float = fe(clip().float())
    rel = max_rel(ours, reference_out)
    print(f"dlr vs published reimplementation: max relative difference {rel:.3g} "
          f"(output scale {reference_out.abs().max().item():.3g})")
    assert ours.shape == (1, 3, 512) and reference_out.abs().max() > 1e-3
    assert rel <= 1e-5 and max_rel(ours_float, reference_out) <= 1e-5
    assert frontend_info(str(path)) == {"format": "published", "type": "dlr", "config": {},
                                        "frame_dim": 512, "preset": "lipread", "extra": {}}


def test_wrapped_published_weights_load_into_the_encoder(published, reference_out, tmp_path):
    path = tmp_path / "visual_frontend.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in published.state_dict().items()}},
               path)
    enc = build("visual_encoder", "dlr_resnet18", pretrained=str(path), out_dim=8, hidden=16,
                num_blocks=1).train()
    assert not enc.frontend.training and not enc.trainable
    feats = enc.frame_features(clip())
    assert max_rel(feats, reference_out) <= 1e-5 and not feats.requires_grad
    assert enc(clip()).shape == (1, 8, 3)


def test_to_reference_round_trip(published):
    ours = convert_reference_state_dict(published.state_dict())
    assert set(ours) == set(DLRFrontend().state_dict())
    theirs = to_reference_state_dict(ours)
    assert set(theirs) == set(published.state_dict())
    for k, v in published.state_dict().items():
        if k == "resnet.layer1.downsample.weight":  # built but never used: written as zeros
            assert theirs[k].shape == v.shape and not theirs[k].any()
        else:
            assert torch.equal(theirs[k], v), k
    back = convert_reference_state_dict(theirs)
    assert all(torch.equal(back[k], v) for k, v in ours.items())
    rebuilt = PublishedVisualFrontend().eval()
    rebuilt.load_state_dict(theirs)  # strict: a published module loads what we write
    x = published_input(clip(t=2, seed=3))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), published(x))


def test_old_state_dicts_without_batch_counters_load(published):
    state = {k: v for k, v in published.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    ours = convert_reference_state_dict(state)
    assert int(ours["stem.bn.num_batches_tracked"]) == 0
    assert torch.equal(ours["stages.3.b.bn_out.running_var"],
                       state["resnet.layer4.outbnb.running_var"])


def test_bad_published_files_are_clear_errors(published, tmp_path):
    good = published.state_dict()
    path = tmp_path / "visual_frontend.pt"
    missing = {k: v for k, v in good.items() if k != "resnet.layer3.bn1b.running_var"}
    torch.save(missing, path)
    with pytest.raises(ValueError, match=rf"{path}: cannot convert the reference deep-lip-reading "
                                         r"front-end state dict; missing keys: "
                                         r"resnet\.layer3\.bn1b\.running_var"):
        load_frontend(str(path))
    shaped = {**good, "resnet.layer2.conv1a.weight": torch.zeros(128, 64, 5, 5)}
    torch.save(shaped, path)
    with pytest.raises(ValueError, match=rf"{path}: .*wrong shapes: resnet\.layer2\.conv1a\."
                                         r"weight \(128, 64, 5, 5\) \(expected \(128, 64, 3, 3\)\)"):
        load_frontend(str(path))
    extra = {**good, "resnet.fc.weight": torch.zeros(10, 512)}
    torch.save(extra, path)
    with pytest.raises(ValueError, match=r"unexpected keys: resnet\.fc\.weight"):
        load_frontend(str(path))
    torch.save(torch.zeros(3), path)
    with pytest.raises(ValueError, match=rf"{path}: not a front-end file; .*got Tensor"):
        load_frontend(str(path))
    with pytest.raises(ValueError, match="expected a state dict .* got list"):
        convert_reference_state_dict([1])


def test_the_dlr_frontend_needs_112_pixel_crops():
    with pytest.raises(ValueError, match=r"DLRFrontend expects lip ROIs \[B, Tv, 112, 112\]"):
        DLRFrontend()(torch.zeros(1, 2, 88, 88, dtype=torch.uint8))
