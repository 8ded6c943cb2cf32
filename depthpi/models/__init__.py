"""Pose models: ResNet backbones, volumetric head, baseline and RGB-D teacher (§4.1–4.2)."""
from depthpi.models.head import VolumetricHead, soft_argmax_3d
from depthpi.models.posenet import (Fusion, Frozen, ModelConfig, PoseNet, PoseOutput, RGBDTeacher, build_model,
                                    freeze)
from depthpi.models.resnet import (LoadReport, ResNet, adapt_conv1, load_backbone_checkpoint, load_backbone_state,
                                   load_imagenet)
from depthpi.models.taps import block_to_path, parse_tap, path_to_block, valid_taps

__all__ = [
    "Fusion", "Frozen", "LoadReport", "ModelConfig", "PoseNet", "PoseOutput", "RGBDTeacher", "ResNet",
    "VolumetricHead", "adapt_conv1", "block_to_path", "build_model", "freeze", "load_backbone_checkpoint",
    "load_backbone_state", "load_imagenet", "parse_tap", "path_to_block", "soft_argmax_3d", "valid_taps",
]
