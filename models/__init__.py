"""Learning rules and networks: primitives, rules, asymmetric layers, ResNets, training, checkpoints.

Public API of the rule engine::

    import models
    net = models.build_model("resnet18", rule="sa", width=0.25, small_input=True, num_classes=10)
    net = models.convert(torchvision_model, "wm")          # any nn.Module with Conv2d/Linear layers
    loss_R, per_layer = models.alignment_loss(net)        # after a train-mode forward pass
    models.alignment_metrics(net)                         # {layer: {"angle_deg", "norm_ratio"}}
    model, metadata = models.random_init("resnet18")      # the untrained baseline, seeded
    models.weights_sha256(model)                          # the content key of a network's weights

Training: `models.train.train` / `train_or_reuse`; checkpoints: `models.checkpoint`; configs: `models.presets`;
atomic writes: `models.files`.
"""
from .alignment import alignment_loss, clear_stash
from .baselines import random_init
from .checkpoint import weights_sha256
from .convert import (asymmetric_layers, backward_parameters, convert, forward_parameters,
                      load_state_dict)
from .layer_ops import AlignmentOptions, LayerOps
from .layers import AsymConv2d, AsymLinear
from .metrics import alignment_metrics
from .resnet import (ARCHS, build_model, resnet18, resnet34, resnet50, resnet50_v2, resnet101_v2,
                     resnet152_v2)
from .rules import PRIMITIVES, RULES, Rule, get_rule

__all__ = [
    "AlignmentOptions", "LayerOps", "alignment_loss", "clear_stash", "random_init", "weights_sha256",
    "asymmetric_layers", "backward_parameters", "convert", "forward_parameters", "load_state_dict",
    "AsymConv2d", "AsymLinear", "alignment_metrics",
    "ARCHS", "build_model", "resnet18", "resnet34", "resnet50", "resnet50_v2", "resnet101_v2", "resnet152_v2",
    "PRIMITIVES", "RULES", "Rule", "get_rule",
]
