"""PLR-OSNet (Xie et al., "Learning Diverse Features with Part-Level Resolution for Person
Re-Identification", 2020, arXiv:2001.07442; docs/methods.md section 5).

Layout (Fig. 3 of the paper):

    shared net     OSNet x1.0 conv1, max-pool, conv2, attention, conv3, attention
    global branch  its own copy of conv4 and conv5; global max pooling -> g (512)
    local branch   its own copy of conv4 and conv5; 4 horizontal stripes, each average pooled,
                   concatenated -> l (2048), one identity loss on the concatenation (Eq. 3-4)
    BNNeck         per branch a BatchNorm1d; triplet and center losses on g and l (before BN),
                   cross-entropy on the classifiers of the post-BN features

Attention (Sec. III-B-1), after conv2 (256 channels) and after conv3 (384 channels):
`SpatialAttention` (the position attention module of ABD-Net, ref. [6] of the paper) then channel
attention, the squeeze-and-excitation gate of ref. [39] (`reidfast.models.osnet.ChannelGate`,
reduction 16; the paper's "slight modifications" are only drawn in its Fig. 3 and not reproduced).

Choices where the paper and its authors' code differ or are silent:

- Global branch: the paper takes the 512-d GMP vector as the global feature; the authors' code
  puts a Linear(512, 512) (with bias) between GMP and BatchNorm. Default: the paper
  (`global_fc=False`); `global_fc=True` adds the Linear (weight ~ N(0, 0.01), bias 0, as in that code).
- BNNeck as Luo et al. ("Bag of Tricks", 2019) define it: the BatchNorm1d's bias is frozen at 0 and
  the classifiers have no bias, weight ~ N(0, 0.001). (The authors' code trains both biases.)
- Stripes: rows [floor(i*h/4), floor((i+1)*h/4)) of the h-row map (docs/methods.md section 0), which
  are the authors' slices for every h; pooled by one `reidfast.ops.pyramid_pool` call.
- Test embedding: the L2-normalised post-BN global feature, then the local one (the authors' code
  puts the local one first; the order does not change distances).
- Initialisation: the attention modules' convolutions as OSNet's (He normal, fan_out; biases 0),
  the spatial attention's scale 0; BNNeck weight 1.

Parameter count (computed from the architecture in tests/test_models_osnet.py): 3,274,622 with
attention and without classifiers (the paper says 3.4M), plus 2560 * num_classes for the
classifiers, plus 262,656 with `global_fc`; attention=False removes 294,346.
"""

from __future__ import annotations

import copy
import os
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from reidfast.models.checkpoints import check_weights_path
from reidfast.models.osnet import CHANNELS, ChannelGate, check_image, init_osnet_params, osnet_map_size, osnet_x1_0
from reidfast.nn.outputs import PLROSNetOutput
from reidfast._checks import check_bool, check_int
from reidfast.ops.pyramid_pool import pyramid_pool, pyramid_windows

NUM_STRIPES = 4
STRIPE_WINDOWS = pyramid_windows(NUM_STRIPES, levels=(1,))
GLOBAL_DIM = CHANNELS[3]
LOCAL_DIM = NUM_STRIPES * CHANNELS[3]
CLASSIFIER_STD = 0.001
GLOBAL_FC_STD = 0.01


class SpatialAttention(nn.Module):
    """Position attention (ABD-Net's PAM; Fu et al., DANet, 2019): every position gathers the values
    of all positions, weighted by query-key affinity, added back with a learnable scale.

    With q = Wq x, k = Wk x (1x1 convs C -> C/8, with bias), v = Wv x (1x1 conv C -> C) over the
    N = H * W positions:

        A = softmax_j(q_i . k_j)  (Tensor[B, N, N]),   out_i = x_i + scale * sum_j A_ij v_j,

    scale initialised to 0, so that the module starts as the identity.

    x (Tensor[B, C, H, W]) -> Tensor[B, C, H, W].
    """

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        self.query = nn.Conv2d(channels, channels // reduction, 1)
        self.key = nn.Conv2d(channels, channels // reduction, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.scale = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query = self.query(x).flatten(2)  # [B, C/8, N]
        key = self.key(x).flatten(2)  # [B, C/8, N]
        value = self.value(x).flatten(2)  # [B, C, N]
        affinity = torch.softmax(query.transpose(1, 2) @ key, dim=-1)  # [B, N, N], rows sum to 1
        gathered = value @ affinity.transpose(1, 2)  # [B, C, N]
        return x + self.scale * gathered.reshape(x.shape)


def attention_module(channels: int) -> nn.Sequential:
    """Spatial attention, then channel attention (the paper's SAM + CAM)."""
    return nn.Sequential(OrderedDict(spatial=SpatialAttention(channels), channel=ChannelGate(channels)))


class PLROSNet(nn.Module):
    """PLR-OSNet: OSNet x1.0 shared net with attention, a global and a local branch, BNNeck.

    Args:
        num_classes: number of training identities (>= 0); 0 builds no classifiers (logits None).
        attention: insert the spatial + channel attention modules after conv2 and conv3; False
            removes both (Table VI of the paper).
        backbone_weights: path of a torchreid `osnet_x1_0` checkpoint (see
            `reidfast.models.osnet.osnet_x1_0`) loaded into the backbone before conv4 and conv5
            are copied into the branches, or None. Nothing is downloaded.
        global_fc: add the authors' Linear(512, 512) after global max pooling (module docstring).

    Train mode: x (Tensor[B, 3, H, W]) -> PLROSNetOutput with global_features (Tensor[B, 512]),
    local_features (Tensor[B, 2048]), global_logits and local_logits (Tensor[B, num_classes] or
    None) and embedding (Tensor[B, 2560]). Eval mode: the embedding, Tensor[B, 2560]: the
    L2-normalised post-BN global and local features, concatenated. The input needs at least 61
    rows (a 4-row map for the 4 stripes) and 13 columns; 256x128 is the paper's size.
    """

    backbone_modules = ("conv1", "conv2", "conv3", "global_branch", "local_branch")

    def __init__(
        self,
        num_classes: int,
        attention: bool = True,
        backbone_weights: str | os.PathLike | None = None,
        global_fc: bool = False,
    ):
        super().__init__()
        check_int("num_classes", num_classes, minimum=0)
        check_bool("attention", attention)
        check_bool("global_fc", global_fc)
        check_weights_path("backbone_weights", backbone_weights)
        backbone = osnet_x1_0(backbone_weights)
        self.num_classes = num_classes
        self.conv1, self.maxpool = backbone.conv1, backbone.maxpool
        self.conv2, self.conv3 = backbone.conv2, backbone.conv3
        self.attention2 = attention_module(CHANNELS[1]) if attention else nn.Identity()
        self.attention3 = attention_module(CHANNELS[2]) if attention else nn.Identity()
        branch = nn.Sequential(OrderedDict(conv4=backbone.conv4, conv5=backbone.conv5))
        self.global_branch = copy.deepcopy(branch)
        self.local_branch = copy.deepcopy(branch)
        self.global_fc = nn.Linear(GLOBAL_DIM, GLOBAL_DIM) if global_fc else nn.Identity()
        self.global_bn = _bnneck(GLOBAL_DIM)
        self.local_bn = _bnneck(LOCAL_DIM)
        self.global_classifier = nn.Linear(GLOBAL_DIM, num_classes, bias=False) if num_classes else None
        self.local_classifier = nn.Linear(LOCAL_DIM, num_classes, bias=False) if num_classes else None
        self._init_head()

    def _init_head(self) -> None:
        init_osnet_params(self.attention2)
        init_osnet_params(self.attention3)
        if isinstance(self.global_fc, nn.Linear):
            nn.init.normal_(self.global_fc.weight, std=GLOBAL_FC_STD)
            nn.init.zeros_(self.global_fc.bias)
        for classifier in (self.global_classifier, self.local_classifier):
            if classifier is not None:
                nn.init.normal_(classifier.weight, std=CLASSIFIER_STD)

    def forward(self, x: torch.Tensor) -> PLROSNetOutput | torch.Tensor:
        check_image(x, "PLR-OSNet")
        map_rows = osnet_map_size(x.shape[2], x.shape[3])[0]
        if map_rows < NUM_STRIPES:
            raise ValueError(
                f"x: PLR-OSNet's local branch cuts the feature map into {NUM_STRIPES} stripes, but a "
                f"{x.shape[2]}-row image gives a {map_rows}-row map (at least 61 rows are needed), "
                f"got shape {tuple(x.shape)}"
            )
        shared = self.attention2(self.conv2(self.maxpool(self.conv1(x))))
        shared = self.attention3(self.conv3(shared))
        global_map = self.global_branch(shared)  # [B, 512, h, w]
        local_map = self.local_branch(shared)  # [B, 512, h, w]
        global_features = self.global_fc(global_map.amax(dim=(2, 3)))  # [B, 512]
        local_features = pyramid_pool(local_map, NUM_STRIPES, STRIPE_WINDOWS, pool="avg").flatten(1)  # [B, 2048]
        global_bn = self.global_bn(global_features)
        local_bn = self.local_bn(local_features)
        embedding = torch.cat([F.normalize(global_bn, dim=1), F.normalize(local_bn, dim=1)], dim=1)
        if not self.training:
            return embedding
        if self.num_classes:
            global_logits, local_logits = self.global_classifier(global_bn), self.local_classifier(local_bn)
        else:
            global_logits = local_logits = None
        return PLROSNetOutput(global_features, local_features, global_logits, local_logits, embedding)


def _bnneck(features: int) -> nn.BatchNorm1d:
    """BNNeck's BatchNorm1d: weight 1, bias 0 and frozen (no shift before the classifier)."""
    norm = nn.BatchNorm1d(features)
    norm.bias.requires_grad_(False)
    return norm

