"""Backbones and whole Re-ID models; build_model() builds any of them by name."""

from reidfast.models.adaptive_margin_net import AdaptiveMarginNet
from reidfast.models.build import MODEL_NAMES, build_model, model_class
from reidfast.models.mgn import MGN
from reidfast.models.osnet import OSNet, osnet_x1_0
from reidfast.models.pcb import PCB
from reidfast.models.pla import PLA
from reidfast.models.plr_osnet import PLROSNet
from reidfast.models.pyramid import Pyramid
from reidfast.models.resnet import ResNetBackbone, resnet

__all__ = [
    "AdaptiveMarginNet",
    "MGN",
    "MODEL_NAMES",
    "OSNet",
    "PCB",
    "PLA",
    "PLROSNet",
    "Pyramid",
    "ResNetBackbone",
    "build_model",
    "model_class",
    "osnet_x1_0",
    "resnet",
]
