"""Model registry: torchvision classifiers, CIFAR-style ResNets, the demo model and user factories.

A model is named by a string so that a policy file can say which model it belongs to:

* any classification model of ``torchvision.models`` (``resnet18``, ``mobilenet_v2``, ...), randomly initialised;
* ``resnet20`` / ``resnet32`` / ``resnet44`` / ``resnet56``: the CIFAR ResNets of He et al. (2016), with a 1x1
  projection shortcut where the shape changes (option B) so every residual coupling is visible to the dependency
  graph;
* ``fmnist-resnet20``: the demo model (ResNet-20, 1x28x28, 10 classes) with its committed checkpoint;
* ``fmnist-mobilenetv2``: a compact MobileNetV2 (inverted residuals, depthwise convolutions) for 1x28x28, 10
  classes, with its committed checkpoint: a model where capacity is scarce, so how it is pruned matters;
* ``package.module:factory``: a user function returning an ``nn.Module``.

torchvision's ShuffleNetV2 blocks are rebuilt as :class:`ShuffleNetV2Block` (same submodules, weights and outputs)
so that Torch-Pruning can trace them.

Weights come from a state_dict file loaded with ``weights_only=True``; a whole pickled module is unpickled only
when the caller says it trusts the file, because unpickling runs arbitrary code.
"""

from __future__ import annotations

import importlib
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from autoprune.data import IMAGENET_STATS
from autoprune.errors import UserError

DEMO_MODEL = "fmnist-resnet20"
DEMO_CHECKPOINT = Path(__file__).parent / "checkpoints" / "fmnist-resnet20.pt"
COMPACT_MODEL = "fmnist-mobilenetv2"
COMPACT_CHECKPOINT = Path(__file__).parent / "checkpoints" / "fmnist-mobilenetv2.pt"
# MobileNetV2's (expansion t, channels c, blocks n, stride s) rows for a 28x28 input: the stem keeps 28x28 (the
# ImageNet net halves 224 five times; here two halvings leave 7x7 for the last blocks), and half the ImageNet depth.
COMPACT_SETTING = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 2, 1], [6, 96, 1, 1]]
CIFAR_RESNET_DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet44": 44, "resnet56": 56}
_INPUT_SHAPE_OVERRIDES = {"inception_v3": (1, 3, 299, 299)}


@dataclass(frozen=True)
class ModelSpec:
    """What a model name resolves to: how to build it and the input it expects by default."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    default_weights: Path | None = None


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def compact_mobilenet_v2(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """torchvision's MobileNetV2 with :data:`COMPACT_SETTING`, a stride-1 stem for ``in_channels`` and a 512-wide
    last layer (ImageNet's 1280 is sized for 1000 classes)."""
    from torchvision.models import MobileNetV2
    from torchvision.ops.misc import Conv2dNormActivation

    net = MobileNetV2(num_classes=num_classes, inverted_residual_setting=COMPACT_SETTING, dropout=0.1)
    net.features[0] = Conv2dNormActivation(in_channels, 32, stride=1, activation_layer=nn.ReLU6)
    last_in = net.features[-1][0].in_channels
    net.features[-1] = Conv2dNormActivation(last_in, 512, kernel_size=1, activation_layer=nn.ReLU6)
    net.classifier[-1] = nn.Linear(512, num_classes)
    net.last_channel = 512
    return net


class ShuffleNetV2Block(nn.Module):
    """torchvision's ShuffleNetV2 ``InvertedResidual`` with the same submodules (so the same state_dict keys and
    weights) and the same outputs, written so that Torch-Pruning 1.x on PyTorch 2 can trace it.

    torchvision's block splits with ``x.chunk(2, dim=1)`` and shuffles with ``view``/``transpose``/``view``; both
    break Torch-Pruning's graph building, because it reads shapes from autograd attributes under their PyTorch 1
    names (``_saved_self_sizes``, ``_saved_split_sizes``) where PyTorch 2 saves ``_saved_self_sym_sizes`` and, for
    chunk, ``_saved_split_size``:

    * ``torch_pruning.dependency.index_mapping.update_reshape_index_mapping`` then takes every ``view`` for a 2-D/4-D
      flatten and infers its channel counts through the graph (``shape_infer.infer_in_channels_recursively``, which
      for a split feeding a concat returns "concat channels minus the other inputs'"): 0 for the shuffle's 5-D view,
      a ``ZeroDivisionError``. Here the shuffle is ``F.channel_shuffle``, one autograd node with no view in it;
    * ``shape_infer.init_shape_information`` falls back to the same inference for chunk's split sizes and gets a
      short offsets list, an ``IndexError`` in ``_SplitIndexMapping``. Here the split is ``torch.split`` with explicit
      sizes, whose ``_saved_split_sizes`` it reads.

    Torch-Pruning has no index mapping for a channel shuffle either way: :func:`autoprune.layers.analyze` leaves
    the channels that pass through it at full width.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.stride = block.stride
        self.branch1 = block.branch1
        self.branch2 = block.branch2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            first = (x.shape[1] + 1) // 2  # chunk(2)'s sizes
            x1, x2 = torch.split(x, [first, x.shape[1] - first], dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        if torch.onnx.is_in_onnx_export():
            # the TorchScript ONNX exporter has no symbolic for aten::channel_shuffle: export torchvision's reshapes
            from torchvision.models.shufflenetv2 import channel_shuffle

            return channel_shuffle(out, 2)
        return F.channel_shuffle(out, 2)


def adapt_shufflenet_v2(model: nn.Module) -> nn.Module:
    """``model`` with every torchvision ShuffleNetV2 block (anywhere in it) replaced by a :class:`ShuffleNetV2Block`
    sharing its submodules, in place; other models are returned untouched."""
    shufflenet = sys.modules.get("torchvision.models.shufflenetv2")
    if shufflenet is None:  # no such block can exist before its module is imported
        return model
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is shufflenet.InvertedResidual:
                setattr(parent, name, ShuffleNetV2Block(child))
    return model


class CifarResNet(nn.Module):
    """ResNet-6n+2 for small images (He et al., 2016, section 4.2)."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def torchvision_classifiers() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def resolve(name: str, num_classes: int | None = None, in_channels: int | None = None) -> ModelSpec:
    """Resolve a model name to its spec (no weights are loaded)."""
    if name == DEMO_MODEL:
        return ModelSpec(name, (1, 1, 28, 28), 10, DEMO_CHECKPOINT)
    if name == COMPACT_MODEL:
        return ModelSpec(name, (1, in_channels or 1, 28, 28), num_classes or 10, COMPACT_CHECKPOINT)
    if name in CIFAR_RESNET_DEPTHS:
        c = in_channels or 3
        return ModelSpec(name, (1, c, 32, 32), num_classes or 10)
    if ":" in name:
        return ModelSpec(name, (1, in_channels or 3, 224, 224), num_classes or 1000)
    if name in torchvision_classifiers():
        shape = _INPUT_SHAPE_OVERRIDES.get(name, (1, 3, 224, 224))
        return ModelSpec(name, shape, num_classes or 1000)
    raise UserError(
        f"unknown model {name!r}: use a torchvision classifier (e.g. resnet18), resnet20/32/44/56, "
        f"{DEMO_MODEL}, {COMPACT_MODEL}, or package.module:factory"
    )


def input_normalisation(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean and std a model's images are normalised with: a torchvision classifier's own (from its
    pretrained weights' evaluation transform), else ImageNet's."""
    if ":" in name or name not in torchvision_classifiers():
        return IMAGENET_STATS
    import torchvision.models as tvm

    try:
        tf = tvm.get_model_weights(name).DEFAULT.transforms()
        return tuple(tf.mean), tuple(tf.std)
    except (ValueError, AttributeError, TypeError):  # a model without published weights
        return IMAGENET_STATS


def require_trusted_factory(name: str, source: str, *, named_by_user: str | None = None, trust: bool = False) -> None:
    """A model a received file names as ``package.module:factory`` is code: importing it runs the module. It is
    imported only when the user names the same factory (``--model``) or trusts the file (``--trust-pickle``, the
    flag that already guards unpickling); otherwise one :class:`UserError`."""
    if ":" not in name or trust or named_by_user == name:
        return
    module = name.partition(":")[0]
    raise UserError(
        f"{source} names the model factory {name!r}: importing it would run code from the module "
        f"{module!r}; pass --model {name} if you trust that module (or --trust-pickle to trust the file)"
    )


def _build_architecture(spec: ModelSpec, in_channels: int | None) -> nn.Module:
    name = spec.name
    if name == DEMO_MODEL:
        return CifarResNet(20, num_classes=10, in_channels=1)
    if name == COMPACT_MODEL:
        return compact_mobilenet_v2(spec.num_classes, in_channels or 1)
    if name in CIFAR_RESNET_DEPTHS:
        return CifarResNet(CIFAR_RESNET_DEPTHS[name], spec.num_classes, in_channels or 3)
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise UserError(f"cannot import model factory {name!r} ({e}): check the module is importable") from e
        model = factory()
        if not isinstance(model, nn.Module):
            raise UserError(f"model factory {name!r} returned {type(model).__name__}, not a torch.nn.Module")
        return model
    import torchvision.models as tvm

    kwargs: dict = {"weights": None, "num_classes": spec.num_classes}
    if name in ("inception_v3", "googlenet"):
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = True
    return tvm.get_model(name, **kwargs)


def load_state_dict_file(path: str | Path, trust_pickle: bool = False) -> dict[str, torch.Tensor] | nn.Module:
    """Load a weights file: a state_dict (or autoprune checkpoint), or a whole module when trusted."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"weights file {str(path)!r} does not exist: pass the path of a saved state_dict")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not trust_pickle:
            raise UserError(
                f"{path} holds a pickled object, not a plain state_dict; loading it runs code from the file: "
                "pass --trust-pickle if you trust it"
            ) from e
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError) as e:
        raise UserError(f"cannot read weights file {path}: {str(e).splitlines()[0]}") from e
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} is not a state_dict (a mapping of parameter names to tensors)")
    return obj


def load_weights(model: nn.Module, weights: str | Path, trust_pickle: bool = False) -> nn.Module:
    """Load weights into ``model``; returns the module to use (a trusted pickled module replaces it)."""
    obj = load_state_dict_file(weights, trust_pickle)
    if isinstance(obj, nn.Module):
        return obj
    try:
        model.load_state_dict(obj)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else "shape mismatch"
        raise UserError(f"weights {weights} do not fit the model: {first}") from e
    return model


def build_model(
    name: str,
    weights: str | Path | None = None,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    trust_pickle: bool = False,
    use_default_weights: bool = True,
) -> tuple[nn.Module, ModelSpec]:
    """Build ``name`` in eval mode, with ``weights`` (or the model's shipped checkpoint) loaded."""
    spec = resolve(name, num_classes, in_channels)
    model = _build_architecture(spec, in_channels)
    if weights is None and use_default_weights and spec.default_weights is not None:
        if not spec.default_weights.is_file():
            raise UserError(
                f"the checkpoint of {name} ({spec.default_weights}) is missing: train it with `autoprune train "
                f"--model {name} --data fashion-mnist --out {spec.default_weights}` (benchmarks/README.md has the "
                "command it was trained with), or pass --weights"
            )
        weights = spec.default_weights
    if weights is not None:
        model = load_weights(model, weights, trust_pickle)
    return adapt_shufflenet_v2(model).eval(), spec


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``1x3x224x224`` -> (1, 3, 224, 224)."""
    try:
        shape = tuple(int(p) for p in text.lower().replace("×", "x").split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 4 or any(d <= 0 for d in shape):
        raise UserError(f"input shape {text!r} is not NxCxHxW with positive integers, e.g. 1x3x224x224")
    return shape
