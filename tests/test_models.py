"""Models: backbone shapes and names, weight loading, head, taps, teacher, freeze, partial conv."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from depthpi.models import (ModelConfig, PoseNet, RGBDTeacher, ResNet, build_model, freeze, load_backbone_state,
                            soft_argmax_3d, valid_taps)
from depthpi.models.head import VolumetricHead
from depthpi.models.partial_conv import PartialConv2d, masked_max_pool
from depthpi.models.taps import block_alias, block_to_path, canonical_tap, parse_tap, path_to_block, same_tap
from depthpi.validation import ConfigError
from depthpi.weights import load_weights

W = 1 / 16  # ResNet-50 at 1/16 width: stem 4 channels, layer4 128
FIXTURE = Path(__file__).parent / "fixtures" / "torchvision_resnet50_keys.txt"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _cfg(**kw) -> ModelConfig:
    return ModelConfig(**{"width": W, "init": "none", "depth_bins": 8, **kw})


def _stage_shapes(model: ResNet, n: int) -> list[tuple[int, int]]:
    """(channels, side) after each layer, read through the last block's tap of each layer."""
    taps = {f"layer{i}.{len(getattr(model, f'layer{i}')) - 1}.post_relu": [f"l{i}"] for i in range(1, 5)}
    feats: dict = {}
    model.eval().forward_taps(torch.randn(1, model.in_chans, n, n), taps, feats)
    return [(feats[f"l{i}"].shape[1], feats[f"l{i}"].shape[-1]) for i in range(1, 5)]


# --- backbone ---------------------------------------------------------------------------

@pytest.mark.parametrize("n, side", [(257, 17), (129, 9), (65, 5)])
def test_backbone_output_side_and_feature_info(n, side):
    model = ResNet("resnet50", W)
    shapes = _stage_shapes(model, n)
    assert shapes[-1][1] == side
    info = model.feature_info[1:]
    assert [c for c, _ in shapes] == [f["num_chs"] for f in info] == [16, 32, 64, 128]
    assert [f["reduction"] for f in info] == [4, 8, 16, 16]
    assert [s for _, s in shapes] == [(n - 1) // r + 1 for r in (4, 8, 16, 16)]


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet101"])
def test_other_archs_reach_17x17(arch):
    model = ResNet(arch, W).eval()
    assert model(torch.randn(1, 3, 257, 257)).shape[-2:] == (17, 17)


def test_dilation_keeps_layer4_at_layer3_resolution_like_torchvision():
    dilated, strided = _stage_shapes(ResNet("resnet50", W), 129), _stage_shapes(ResNet("resnet50", W, output_stride=32), 129)
    assert dilated[3][1] == dilated[2][1] == 9 and strided[3][1] == 5
    layer4 = ResNet("resnet50", W).layer4
    # First block: stride 1, previous dilation (1) in its 3×3; later blocks dilation 2.
    assert layer4[0].conv2.stride == (1, 1) and layer4[0].conv2.dilation == (1, 1)
    assert layer4[0].downsample[0].stride == (1, 1)
    assert all(b.conv2.dilation == (2, 2) and b.conv2.padding == (2, 2) for b in layer4[1:])


def test_resnet50_state_dict_keys_match_torchvision():
    expected = FIXTURE.read_text().split()
    assert len(expected) == 320
    keys = list(ResNet("resnet50", 1.0).state_dict()) + ["fc.weight", "fc.bias"]
    assert keys == expected
    assert list(ResNet("resnet50", W, 1, partial_conv=True).state_dict()) == keys[:-2]


def _load_file(model: ResNet, path: Path, prefix: str = ""):
    """A weights file's backbone into ``model``, as ``build_model`` loads every backbone part."""
    return load_backbone_state(model, load_weights(path), str(path), prefix)


def _fake_torchvision_file(tmp_path: Path, in_chans: int = 3) -> tuple[Path, dict]:
    state = ResNet("resnet50", W, in_chans).state_dict()
    for v in state.values():
        if v.is_floating_point():
            v.normal_()  # BN statistics too, so a load is visible everywhere
    state["fc.weight"], state["fc.bias"] = torch.randn(10, 128), torch.randn(10)
    path = tmp_path / "resnet50-imagenet.pth"
    torch.save(state, path)
    return path, state


def test_an_imagenet_file_loads_with_conv1_averaged_and_fc_reported(tmp_path):
    path, state = _fake_torchvision_file(tmp_path)
    model = ResNet("resnet50", W, in_chans=1)
    report = _load_file(model, path)
    assert report.missing == [] and report.unexpected == ["fc.weight", "fc.bias"]
    torch.testing.assert_close(model.conv1.weight, state["conv1.weight"].mean(dim=1, keepdim=True), rtol=0, atol=0)
    assert torch.equal(model.layer3[5].bn3.running_var, state["layer3.5.bn3.running_var"])


def test_depth_to_rgb_conv1_is_copied_over_three(tmp_path):
    depth_net = build_model(_cfg(input="depth"))
    path = tmp_path / "depth.pt"
    torch.save(depth_net.state_dict(), path)
    rgb = ResNet("resnet50", W, in_chans=3)
    report = _load_file(rgb, path, "backbone.")
    assert report.missing == [] and set(report.unexpected) == {"head.conv.weight", "head.conv.bias"}
    w1 = depth_net.backbone.conv1.weight
    torch.testing.assert_close(rgb.conv1.weight, w1.repeat(1, 3, 1, 1) / 3)
    grey = torch.full((1, 1, 33, 33), 0.7)
    torch.testing.assert_close(rgb.conv1(grey.repeat(1, 3, 1, 1)), depth_net.backbone.conv1(grey))


def test_rgb_to_rgbd_conv1_is_tiled_and_rescaled(tmp_path):
    path, state = _fake_torchvision_file(tmp_path)
    rgbd = ResNet("resnet50", W, in_chans=4)
    assert _load_file(rgbd, path).missing == []
    w = state["conv1.weight"]
    torch.testing.assert_close(rgbd.conv1.weight, torch.cat((w, w[:, :1]), dim=1) * 3 / 4, rtol=0, atol=0)


def test_missing_unexpected_and_shape_mismatch_are_reported(tmp_path):
    path, state = _fake_torchvision_file(tmp_path)
    del state["layer2.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, path)
    report = _load_file(ResNet("resnet50", W), path)
    assert report.missing == ["layer2.0.conv1.weight"]
    assert set(report.unexpected) == {"fc.weight", "fc.bias", "extra.weight"}
    with pytest.raises(ValueError, match=r"resnet50-imagenet\.pth: key 'conv1\.weight' has shape \(4, 3, 7, 7\)"
                                         r".*expects \(8, 3, 7, 7\)"):
        _load_file(ResNet("resnet50", 2 * W), path)


def test_build_model_inits_teacher_and_student(tmp_path):
    path, state = _fake_torchvision_file(tmp_path)
    teacher = build_model(_cfg(kind="teacher", init="standard", imagenet_path=str(path)))
    assert torch.equal(teacher.depth.conv1.weight, state["conv1.weight"].mean(dim=1, keepdim=True))
    assert torch.equal(teacher.rgb.layer2[1].conv2.weight, state["layer2.1.conv2.weight"])
    assert torch.equal(teacher.trunk.layer3[0].downsample[0].weight, state["layer3.0.downsample.0.weight"])
    depth_base = build_model(_cfg(input="depth"))
    depth_path = tmp_path / "depth.pt"
    torch.save(depth_base.state_dict(), depth_path)
    t32 = build_model(_cfg(kind="teacher", init="standard", imagenet_path=str(path),
                           depth_branch_checkpoint=str(depth_path)))
    assert torch.equal(t32.depth.layer2[3].conv3.weight, depth_base.backbone.layer2[3].conv3.weight)
    assert torch.equal(t32.rgb.conv1.weight, state["conv1.weight"])
    # init="none" still loads a configured depth branch, and refuses one that is not there
    scratch = build_model(_cfg(kind="teacher", depth_branch_checkpoint=str(depth_path)))
    assert torch.equal(scratch.depth.layer2[3].conv3.weight, depth_base.backbone.layer2[3].conv3.weight)
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        build_model(_cfg(kind="teacher", depth_branch_checkpoint=str(tmp_path / "absent.pt")))
    student = build_model(_cfg(init="checkpoint", init_checkpoint=str(depth_path)))
    torch.testing.assert_close(student.backbone.conv1.weight, depth_base.backbone.conv1.weight.repeat(1, 3, 1, 1) / 3)
    assert torch.equal(student.head.conv.weight, depth_base.head.conv.weight)


@pytest.mark.parametrize("kw, field", [
    (dict(width=0), "width"), (dict(root_index=17), "root_index"), (dict(output_stride=8), "output_stride"),
    (dict(partial_conv=True), "partial_conv"), (dict(init="checkpoint"), "init_checkpoint"),
    (dict(depth_branch_checkpoint="x.pt"), "depth_branch_checkpoint"),
])
def test_config_errors_name_the_field(kw, field):
    with pytest.raises(ConfigError, match=f"config key '{field}': expected "):
        ModelConfig(**{"init": "none", **kw})


def test_standard_init_needs_an_imagenet_file(tmp_path):
    with pytest.raises(ConfigError, match="'model.imagenet_path'"):
        build_model(ModelConfig(width=W))
    with pytest.raises(ValueError, match=r"imagenet_path': expected .*init=none.*no such file, got '.*missing.pth'"):
        build_model(ModelConfig(width=W, imagenet_path=str(tmp_path / "missing.pth")))


# --- head -------------------------------------------------------------------------------

def test_soft_argmax_of_one_hot_returns_voxel_centre():
    d, h, w = 8, 9, 5
    scores = torch.zeros(2, 3, d, h, w)
    idx = [(0, 0, 0), (7, 8, 4), (3, 2, 1)]
    for j, (k, v, u) in enumerate(idx):
        scores[:, j, k, v, u] = 1e4
    got = soft_argmax_3d(scores)
    expected = torch.tensor([[(u + 0.5) / w, (v + 0.5) / h, (k + 0.5) / d] for k, v, u in idx])
    torch.testing.assert_close(got, expected.expand(2, 3, 3))


def test_head_layout_root_relative_and_gradients():
    head = VolumetricHead(4, num_joints=3, depth_bins=8, cube_mm=2000.0, root_index=1)
    nn.init.zeros_(head.conv.weight)
    with torch.no_grad():
        head.conv.bias.zero_()
        for j, k in enumerate((2, 5, 7)):
            head.conv.bias[j * 8 + k] = 1e4  # joint j at depth bin k (channel j·D + d)
    feat = torch.randn(1, 4, 9, 9)
    absolute = head.absolute(feat)
    torch.testing.assert_close(absolute[0, :, 2], torch.tensor([2.5, 5.5, 7.5]) / 8 * 2000)
    torch.testing.assert_close(absolute[0, :, :2], torch.full((3, 2), 1000.0))
    torch.testing.assert_close(head(feat)[0, :, 2], torch.tensor([-750.0, 0.0, 500.0]))

    scores = torch.randn(2, 3, 8, 9, 9, requires_grad=True)
    (soft_argmax_3d(scores) * torch.randn(2, 3, 3)).sum().backward()
    assert torch.isfinite(scores.grad).all() and scores.grad.abs().sum() > 0


def test_head_under_bf16_autocast_is_float32_and_close():
    head = VolumetricHead(16, num_joints=17, depth_bins=32)
    feat = torch.randn(2, 16, 17, 17) * 3
    ref = head(feat)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = head(feat)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert (got - ref).abs().max() < 20.0  # mm, out of a 2000 mm cube; bf16 only in the conv


def test_model_channels_last_and_bf16_autocast():
    model = build_model(_cfg(kind="teacher")).eval()
    rgb, depth = torch.randn(2, 3, 65, 65), torch.rand(2, 1, 65, 65)
    ref = model(rgb, depth).joints
    model = model.to(memory_format=torch.channels_last)
    cl = model(rgb.contiguous(memory_format=torch.channels_last), depth.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(cl.joints, ref, atol=0.05, rtol=0)  # mm
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(rgb, depth, taps=("block13.pre_relu",))
    assert out.joints.dtype == torch.float32 and torch.isfinite(out.joints).all()
    assert out.features["block13.pre_relu"].dtype == torch.bfloat16


# --- taps -------------------------------------------------------------------------------

def test_tap_name_mapping():
    depths = (3, 4, 6, 3)
    assert block_to_path(13, depths) == "layer3.5" and block_to_path(16, depths) == "layer4.2"
    assert block_to_path(4, depths) == "layer2.0"
    assert [path_to_block(block_to_path(k, depths), depths) for k in range(1, 17)] == list(range(1, 17))
    assert path_to_block("layer4.2", (3, 4, 23, 3)) == 33
    assert parse_tap("depth.layer2.3.post_relu", "resnet50", teacher=True) == ("depth", "layer2.3.post_relu")
    assert parse_tap("block13.pre_relu", "resnet50", teacher=True) == ("", "layer3.5.pre_relu")
    assert len(valid_taps("resnet50")) == 16 * 2 and "layer3.5.post_relu" in valid_taps("resnet50")


@pytest.mark.parametrize("alias, canonical, arch, teacher", [
    ("block13.post_relu", "layer3.5.post_relu", "resnet50", False), ("block13.pre_relu", "layer3.5.pre_relu", "resnet50", True),
    ("block33.post_relu", "layer4.2.post_relu", "resnet101", False), ("block6.post_relu", "layer3.1.post_relu", "resnet18", False),
    ("rgb.block5.pre_relu", "rgb.layer2.1.pre_relu", "resnet50", True),
    ("depth.block7.post_relu", "depth.layer2.3.post_relu", "resnet34", True),
])
def test_each_tap_has_one_canonical_name_and_one_block_alias(alias, canonical, arch, teacher):
    assert canonical_tap(alias, arch, teacher) == canonical_tap(canonical, arch, teacher) == canonical
    assert block_alias(canonical, arch, teacher) == block_alias(alias, arch, teacher) == alias
    assert same_tap(alias, canonical, arch, teacher) and canonical in valid_taps(arch, teacher)
    assert canonical_tap("fusion", arch, teacher=True) == "fusion" and block_alias("fusion", arch, True) is None


def test_two_names_of_other_taps_or_of_none_are_not_the_same_tap():
    assert not same_tap("block13.post_relu", "layer3.5.pre_relu", "resnet50")
    assert not same_tap("block13.post_relu", "block13.post_relu", "resnet18")  # no 13th block
    assert not same_tap("rgb.layer2.1.pre_relu", "depth.layer2.1.pre_relu", "resnet50", teacher=True)


@pytest.mark.parametrize("name, teacher", [
    ("block17.pre_relu", False), ("block13.relu", False), ("layer3.6.pre_relu", False), ("fusion", False),
    ("rgb.block5.pre_relu", False), ("block5.pre_relu", True), ("rgb.block13.pre_relu", True), ("conv1", True),
])
def test_unknown_taps_raise_listing_valid_names(name, teacher):
    model = build_model(_cfg(kind="teacher" if teacher else "baseline")).eval()
    x = torch.randn(1, 3, 65, 65)
    args = (x, torch.rand(1, 1, 65, 65)) if teacher else (x,)
    with pytest.raises(ValueError, match=r"valid taps: .*layer3.5.post_relu.* \(or a block by its count, blockK"):
        model(*args, taps=(name,))


def _manual_block(block, x):
    out = F.relu(block.bn1(block.conv1(x)))
    out = F.relu(block.bn2(block.conv2(out)))
    out = block.bn3(block.conv3(out))
    return out + (block.downsample(x) if block.downsample is not None else x)


def test_baseline_taps_match_manual_run():
    model = build_model(_cfg()).eval()
    x = torch.randn(2, 3, 65, 65)
    names = ("block13.pre_relu", "block13.post_relu", "layer3.5.pre_relu", "block4.pre_relu")
    out = model(x, taps=names)
    assert set(out.features) == set(names)
    b = model.backbone
    with torch.no_grad():
        h = b.maxpool(b.relu(b.bn1(b.conv1(model.normalize(x)))))
        h = b.layer1(h)
        pre4 = _manual_block(b.layer2[0], h)
        h = b.layer2(h)
        for block in b.layer3[:5]:
            h = F.relu(_manual_block(block, h))
        pre13 = _manual_block(b.layer3[5], h)
    torch.testing.assert_close(out.features["block13.pre_relu"], pre13)
    torch.testing.assert_close(out.features["block4.pre_relu"], pre4)
    assert torch.equal(out.features["layer3.5.pre_relu"], out.features["block13.pre_relu"])
    assert torch.equal(out.features["block13.post_relu"], F.relu(out.features["block13.pre_relu"]))
    assert (out.features["block13.pre_relu"] < 0).any()  # pre_relu really is before the ReLU


def test_teacher_taps_follow_fusion_and_trunk():
    model = build_model(_cfg(kind="teacher")).eval()
    rgb, depth = torch.randn(2, 3, 65, 65), torch.rand(2, 1, 65, 65)
    names = ("rgb.block7.post_relu", "depth.layer2.3.post_relu", "fusion", "block13.post_relu", "block16.pre_relu")
    out = model(rgb, depth, taps=names)
    f = out.features
    assert f["fusion"].shape == (2, 32, 9, 9) and f["block13.post_relu"].shape == (2, 64, 5, 5)
    with torch.no_grad():
        fused = model.fusion(f["rgb.block7.post_relu"], f["depth.layer2.3.post_relu"])
        torch.testing.assert_close(f["fusion"], fused)
        torch.testing.assert_close(model.trunk.layer3(fused), f["block13.post_relu"])
        torch.testing.assert_close(model.head(F.relu(f["block16.pre_relu"])), out.joints)
    assert set(f) == set(names)


def _calls(modules: dict[str, nn.Module]) -> dict[str, int]:
    """Forward-call counters for the named modules (blocks run through ``forward_pre``,
    so watch a block's conv1, which is called as a module)."""
    counts = dict.fromkeys(modules, 0)
    for name, module in modules.items():
        module.register_forward_hook(lambda *_, name=name: counts.__setitem__(name, counts[name] + 1))
    return counts


@pytest.mark.parametrize("tap", ["block13.post_relu", "block10.pre_relu", "fusion", "rgb.block3.post_relu"])
def test_teacher_without_head_returns_the_same_tap_and_skips_what_follows(tap):
    model = build_model(_cfg(kind="teacher")).eval()
    rgb, depth = torch.randn(2, 3, 65, 65), torch.rand(2, 1, 65, 65)
    with torch.no_grad():
        full = model(rgb, depth, taps=(tap,)).features[tap]
        counts = _calls({"depth": model.depth.conv1, "layer3.5": model.trunk.layer3[5].conv1,
                         "layer4": model.trunk.layer4[0].conv1, "head": model.head})
        short = model(rgb, depth, taps=(tap,), head=False)
    assert short.joints is None and set(short.features) == {tap}
    torch.testing.assert_close(short.features[tap], full, rtol=0, atol=0)
    assert counts["head"] == 0 and counts["layer4"] == 0
    assert counts["layer3.5"] == (tap == "block13.post_relu")  # block 13 is layer3's last
    assert counts["depth"] == (not tap.startswith("rgb."))


def test_baseline_without_head_stops_at_its_last_tap_and_needs_one():
    model = build_model(_cfg()).eval()
    x = torch.randn(1, 3, 65, 65)
    counts = _calls({"layer4": model.backbone.layer4[0].conv1, "head": model.head})
    out = model(x, taps=("block5.post_relu", "block2.pre_relu"), head=False)
    assert set(out.features) == {"block5.post_relu", "block2.pre_relu"} and counts == {"layer4": 0, "head": 0}
    with pytest.raises(ValueError, match="at least one"):
        model(x, head=False)


# --- teacher/student --------------------------------------------------------------------

def test_frozen_teacher_gets_no_gradient_and_stays_in_eval():
    teacher = freeze(build_model(_cfg(kind="teacher")))
    student = build_model(_cfg())
    teacher.train()
    assert not any(m.training for m in teacher.modules())
    stats = teacher.module.trunk.layer3[0].bn1.running_mean.clone()
    rgb, depth = torch.randn(2, 3, 65, 65), torch.rand(2, 1, 65, 65)
    tap = "block13.post_relu"
    t_feat = teacher(rgb, depth, taps=(tap,)).features[tap]
    s_out = student(rgb, taps=(tap,))
    loss = F.mse_loss(torch.sigmoid(s_out.features[tap]), torch.sigmoid(t_feat)) + s_out.joints.abs().mean()
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert student.backbone.layer3[5].conv3.weight.grad.abs().sum() > 0
    assert torch.equal(stats, teacher.module.trunk.layer3[0].bn1.running_mean)


# --- partial convolutions ---------------------------------------------------------------

def test_partial_conv_with_all_valid_mask_equals_conv_in_interior():
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=True)
    pconv = PartialConv2d(3, 5, 3, stride=2, padding=1, bias=True)
    pconv.load_state_dict(conv.state_dict())
    x = torch.randn(2, 3, 17, 17)
    out, mask = pconv(x, torch.ones(2, 1, 17, 17))
    torch.testing.assert_close(out[..., 1:-1, 1:-1], conv(x)[..., 1:-1, 1:-1])
    assert torch.equal(mask, torch.ones(2, 1, 9, 9))
    corner = conv(x)[..., 0, 0] - conv.bias  # 4 of 9 taps valid at the corner: rescaled by 9/4
    torch.testing.assert_close(out[..., 0, 0] - conv.bias, corner * 9 / 4)


def test_partial_conv_zero_where_no_valid_pixel_and_mask_update():
    pconv = PartialConv2d(1, 2, 3, padding=1, bias=True)
    mask = torch.zeros(1, 1, 9, 9)
    mask[..., 4, 4] = 1
    out, new_mask = pconv(torch.randn(1, 1, 9, 9), mask)
    expected = torch.zeros(1, 1, 9, 9)
    expected[..., 3:6, 3:6] = 1
    assert torch.equal(new_mask, expected)
    assert (out * (1 - expected) == 0).all() and (out[..., 3:6, 3:6] != 0).all()
    pooled, pooled_mask = masked_max_pool(nn.MaxPool2d(3, 2, 1), torch.rand(1, 2, 9, 9), mask)
    assert pooled_mask.sum() == 1 and pooled[..., 2, 2].min() > 0


def test_invalid_depth_values_do_not_influence_partial_network():
    net = ResNet("resnet50", W, in_chans=1, partial_conv=True, stages=(0, 1, 2)).eval()
    plain = ResNet("resnet50", W, in_chans=1, stages=(0, 1, 2)).eval()
    plain.load_state_dict(net.state_dict())
    depth = torch.rand(1, 1, 65, 65) + 0.1
    mask = torch.ones(1, 1, 65, 65)
    mask[..., 10:40, 20:50] = 0
    other = depth.clone()
    other[..., 10:40, 20:50] = torch.rand(30, 30) + 0.1
    with torch.no_grad():
        assert torch.equal(net.forward_taps(depth, mask=mask), net.forward_taps(other, mask=mask))
        assert not torch.allclose(plain(depth), plain(other))
        zeroed = depth * mask  # mask derived from the input: 0 = invalid
        torch.testing.assert_close(net(zeroed), net.forward_taps(other, mask=mask))


def test_partial_conv_teacher_and_depth_baseline_run():
    depth = torch.rand(1, 1, 65, 65)
    depth[..., :20, :] = 0
    baseline = build_model(_cfg(input="depth", partial_conv=True)).eval()
    teacher = build_model(_cfg(kind="teacher", partial_conv=True)).eval()
    assert isinstance(baseline.backbone.layer2[3].conv2, PartialConv2d)
    assert not isinstance(baseline.backbone.layer3[0].conv2, PartialConv2d)
    assert isinstance(teacher.depth.layer1[0].downsample[0], PartialConv2d)
    assert torch.isfinite(baseline(depth).joints).all()
    assert torch.isfinite(teacher(torch.randn(1, 3, 65, 65), depth).joints).all()
    assert isinstance(baseline, PoseNet) and isinstance(teacher, RGBDTeacher)


def test_models_normalise_rgb_themselves_and_keep_standard_state_dict_keys():
    """RGB in [0, 1] goes in; ImageNet normalisation happens inside, invisible to the state dict."""
    from depthpi.models.posenet import IMAGENET_MEAN, IMAGENET_STD

    rgb_model = build_model(_cfg()).eval()
    x = torch.rand(2, 3, 33, 33)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(rgb_model.normalize(x), (x - mean) / std)
    with torch.no_grad():
        torch.testing.assert_close(rgb_model(x).joints, rgb_model.head(rgb_model.backbone((x - mean) / std)))
    assert not any("normalize" in k for k in rgb_model.state_dict())
    assert not any("normalize" in k for k in build_model(_cfg(kind="teacher")).state_dict())
    depth = torch.rand(2, 1, 33, 33)
    depth_model = build_model(_cfg(input="depth")).eval()
    with torch.no_grad():  # depth in [0, 1] is already what the network reads
        torch.testing.assert_close(depth_model(depth).joints, depth_model.head(depth_model.backbone(depth)))
