"""Pose models: ResNet backbones, volumetric head, baseline and RGB-D teacher (§4.1–4.2)."""
from depthpi.models.head import VolumetricHead, soft_argmax_3d
from depthpi.models.posenet import (Fusion, Frozen, Init, ModelConfig, ModelInput, ModelKind, PoseNet, PoseOutput,
                                    RGBDTeacher, build_model, freeze, load_model)
from depthpi.models.resnet import Arch, LoadReport, ResNet, adapt_conv1, load_backbone_state
from depthpi.models.taps import block_to_path, canonical_tap, parse_tap, path_to_block, valid_taps

__all__ = [
    "Arch", "Fusion", "Frozen", "Init", "LoadReport", "ModelConfig", "ModelInput", "ModelKind", "PoseNet",
    "PoseOutput", "RGBDTeacher", "ResNet", "VolumetricHead", "adapt_conv1", "block_to_path", "build_model",
    "canonical_tap", "freeze", "load_backbone_state", "load_model", "parse_tap", "path_to_block", "soft_argmax_3d",
    "valid_taps",
]
