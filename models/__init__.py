"""Learning rules and networks: primitives, rules, asymmetric layers, ResNets, training, checkpoints.

Public API of the rule engine::

    import models
    net = models.build_model("resnet18", rule="sa", width=0.25, small_input=True, num_classes=10)
    net = models.convert(torchvision_model, "wm")          # any nn.Module with Conv2d/Linear layers
    loss_R, per_layer = models.alignment_loss(net)        # after a train-mode forward pass
    models.alignment_metrics(net)                         # {layer: {"angle_deg", "norm_ratio"}}
"""
from .alignment import AlignmentOptions, alignment_loss, clear_stash
from .convert import (asymmetric_layers, backward_parameters, convert, forward_parameters,
                      load_state_dict)
from .layers import AsymConv2d, AsymLinear
from .metrics import alignment_metrics
from .resnet import (ARCHS, build_model, resnet18, resnet34, resnet50, resnet50_v2, resnet101_v2,
                     resnet152_v2)
from .rules import PRIMITIVES, RULES, Rule, get_rule

__all__ = [
    "AlignmentOptions", "alignment_loss", "clear_stash",
    "asymmetric_layers", "backward_parameters", "convert", "forward_parameters", "load_state_dict",
    "AsymConv2d", "AsymLinear", "alignment_metrics",
    "ARCHS", "build_model", "resnet18", "resnet34", "resnet50", "resnet50_v2", "resnet101_v2", "resnet152_v2",
    "PRIMITIVES", "RULES", "Rule", "get_rule",
]
