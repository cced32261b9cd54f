"""ResNets built from asymmetric layers.

v1 (ResNet-18/34/50, He et al. 2015) uses torchvision's module names, so its state_dict keys are exactly
torchvision's (plus `<conv>.weight_backward` for untied rules) and a torchvision state_dict loads into the bp
model with `load_state_dict(..., strict=True)`. Unlike torchvision, every ReLU is its own module (`relu`,
`relu1`, `relu2`, `relu3`; ReLUs have no parameters, so keys are unaffected), so each can be hooked.

v2 (ResNet-50/101/152, pre-activation, He et al. 2016 "Identity mappings"): stem conv + max-pool, bottleneck
units BN-ReLU-conv x3 with the projection shortcut reading the pre-activated input, and a final BN-ReLU
(`post_bn`, `post_relu`) before the pooling.

`width` multiplies every channel count (0.125 gives a tiny CPU-friendly net); `small_input=True` swaps the
7x7/2 stem conv and max-pool for a 3x3/1 conv (for 32-64 px images).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .errors import UnknownNameError
from .layers import AsymConv2d, AsymLinear
from .rules import get_rule

__all__ = ["ResNet", "ResNetV2", "resnet18", "resnet34", "resnet50", "resnet50_v2", "resnet101_v2",
           "resnet152_v2", "ARCHS", "build_model"]


def conv3x3(cin, cout, rule, stride=1):
    return AsymConv2d(cin, cout, 3, stride=stride, padding=1, bias=False, rule=rule)


def conv1x1(cin, cout, rule, stride=1):
    return AsymConv2d(cin, cout, 1, stride=stride, bias=False, rule=rule)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, rule, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, rule, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, rule)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, rule, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes, rule)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, rule, stride)  # stride on the 3x3, as torchvision (v1.5)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = conv1x1(planes, planes * self.expansion, rule)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = downsample
        self.relu3 = nn.ReLU(inplace=True)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + identity)


def _stem(width_64: int, rule, small_input: bool) -> tuple[nn.Module, nn.Module]:
    if small_input:
        return AsymConv2d(3, width_64, 3, stride=1, padding=1, bias=False, rule=rule), nn.Identity()
    return (AsymConv2d(3, width_64, 7, stride=2, padding=3, bias=False, rule=rule),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1))


def _channels(width: float) -> list[int]:
    if not width > 0:
        raise ValueError(f"width must be > 0 (1.0 = the standard ResNet), got {width}")
    return [max(1, int(round(c * width))) for c in (64, 128, 256, 512)]


class ResNet(nn.Module):
    """ResNet v1 with torchvision's module names."""

    def __init__(self, block, layers, rule="bp", num_classes=1000, width=1.0, small_input=False):
        super().__init__()
        rule = get_rule(rule)
        planes = _channels(width)
        self.inplanes = planes[0]
        self.conv1, self.maxpool = _stem(planes[0], rule, small_input)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, planes[0], layers[0], rule)
        self.layer2 = self._make_layer(block, planes[1], layers[1], rule, stride=2)
        self.layer3 = self._make_layer(block, planes[2], layers[2], rule, stride=2)
        self.layer4 = self._make_layer(block, planes[3], layers[3], rule, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = AsymLinear(planes[3] * block.expansion, num_classes, rule=rule)
        _init_like_torchvision(self)
        del self.inplanes

    def _make_layer(self, block, planes, blocks, rule, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, rule, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        units = [block(self.inplanes, planes, rule, stride, downsample)]
        self.inplanes = planes * block.expansion
        units += [block(self.inplanes, planes, rule) for _ in range(1, blocks)]
        return nn.Sequential(*units)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class PreActBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, rule, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.relu1 = nn.ReLU(inplace=False)  # its output feeds both the conv and the projection shortcut
        self.conv1 = conv1x1(inplanes, planes, rule)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, rule, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.relu3 = nn.ReLU(inplace=True)
        self.conv3 = conv1x1(planes, planes * self.expansion, rule)
        self.shortcut = None
        if stride != 1 or inplanes != planes * self.expansion:
            self.shortcut = conv1x1(inplanes, planes * self.expansion, rule, stride)

    def forward(self, x):
        pre = self.relu1(self.bn1(x))
        identity = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.relu2(self.bn2(out)))
        out = self.conv3(self.relu3(self.bn3(out)))
        return out + identity


class ResNetV2(nn.Module):
    """Pre-activation ResNet (v2) with bottleneck units."""

    def __init__(self, layers, rule="bp", num_classes=1000, width=1.0, small_input=False):
        super().__init__()
        rule = get_rule(rule)
        planes = _channels(width)
        self.conv1, self.maxpool = _stem(planes[0], rule, small_input)
        inplanes = planes[0]
        stages = []
        for i, (p, n) in enumerate(zip(planes, layers)):
            units = []
            for j in range(n):
                units.append(PreActBottleneck(inplanes, p, rule, stride=2 if (i > 0 and j == 0) else 1))
                inplanes = p * PreActBottleneck.expansion
            stages.append(nn.Sequential(*units))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.post_bn = nn.BatchNorm2d(inplanes)
        self.post_relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = AsymLinear(inplanes, num_classes, rule=rule)
        _init_like_torchvision(self)

    def forward(self, x):
        x = self.maxpool(self.conv1(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.post_relu(self.post_bn(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _init_like_torchvision(model: nn.Module) -> None:
    """torchvision's ResNet init; each conv's B gets the same scheme as its W, drawn independently."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if getattr(m, "weight_backward", None) is not None:
                nn.init.kaiming_normal_(m.weight_backward, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def resnet18(rule="bp", num_classes=1000, width=1.0, small_input=False) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], rule, num_classes, width, small_input)


def resnet34(rule="bp", num_classes=1000, width=1.0, small_input=False) -> ResNet:
    return ResNet(BasicBlock, [3, 4, 6, 3], rule, num_classes, width, small_input)


def resnet50(rule="bp", num_classes=1000, width=1.0, small_input=False) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], rule, num_classes, width, small_input)


def resnet50_v2(rule="bp", num_classes=1000, width=1.0, small_input=False) -> ResNetV2:
    return ResNetV2([3, 4, 6, 3], rule, num_classes, width, small_input)


def resnet101_v2(rule="bp", num_classes=1000, width=1.0, small_input=False) -> ResNetV2:
    return ResNetV2([3, 4, 23, 3], rule, num_classes, width, small_input)


def resnet152_v2(rule="bp", num_classes=1000, width=1.0, small_input=False) -> ResNetV2:
    return ResNetV2([3, 8, 36, 3], rule, num_classes, width, small_input)


ARCHS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50,
    "resnet50_v2": resnet50_v2, "resnet101_v2": resnet101_v2, "resnet152_v2": resnet152_v2,
}


def build_model(arch: str, rule="bp", **kwargs) -> nn.Module:
    """`ARCHS[arch](rule=rule, **kwargs)` with a clear error for an unknown architecture."""
    key = arch.strip().lower() if isinstance(arch, str) else arch
    if key not in ARCHS:
        raise UnknownNameError(f"unknown arch {arch!r}; valid archs: {', '.join(ARCHS)}")
    return ARCHS[key](rule=rule, **kwargs)
