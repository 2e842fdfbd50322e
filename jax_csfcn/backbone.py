"""ResNet-18 backbone returning the 1/8 and 1/32 feature maps (Flax NNX, NHWC).

Paths mirror torchvision's ``resnet18`` (``conv1``, ``bn1``, ``layer1``..``layer4`` with
``N.conv1/bn1/conv2/bn2/downsample.0/downsample.1``), so an ImageNet checkpoint of
torchvision or timm loads by name.  The deep stems (``conv1.0/1/3/4/6`` then ``bn1``) are
``deep``, timm's ``resnet18d`` stem (ResNet-v1c as in mmsegmentation, 32/32/64 channels), and
``deep128``, the upstream CSFCN's (64/64/128, so layer1's first block projects 128 -> 64);
the widths are :data:`csfcn.model_config.DEEP_STEM_WIDTHS`.
"""

from __future__ import annotations

import jax
from flax import nnx

from csfcn.model_config import DEEP_STEM_WIDTHS, STEMS, stem_width
from jax_csfcn.layers import BatchNorm2d, conv2d


class BasicBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, stride: int, *, dtype=None, rngs: nnx.Rngs):
        self.conv1 = conv2d(cin, cout, 3, stride=stride, dtype=dtype, rngs=rngs)
        self.bn1 = BatchNorm2d(cout, dtype=dtype)
        self.conv2 = conv2d(cout, cout, 3, dtype=dtype, rngs=rngs)
        self.bn2 = BatchNorm2d(cout, dtype=dtype)
        if stride != 1 or cin != cout:
            self.downsample = nnx.List(
                [conv2d(cin, cout, 1, stride=stride, dtype=dtype, rngs=rngs), BatchNorm2d(cout, dtype=dtype)]
            )
        else:
            self.downsample = None

    def __call__(self, x: jax.Array) -> jax.Array:
        out = jax.nn.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample[1](self.downsample[0](x))
        return jax.nn.relu(out + identity)


class ResNet18(nnx.Module):
    """ResNet-18 trunk; ``__call__`` returns ``(feat8, feat32)`` = (layer2, layer4) outputs."""

    def __init__(self, stem: str = "torchvision", *, dtype=None, rngs: nnx.Rngs):
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; choose one of {STEMS}")
        self.stem = stem
        if stem == "torchvision":
            self.conv1 = conv2d(3, 64, 7, stride=2, dtype=dtype, rngs=rngs)
        else:
            a, b, c = DEEP_STEM_WIDTHS[stem]
            # Sequential indices 2 and 5 are ReLUs (no parameters) in the PyTorch layout.
            self.conv1 = nnx.Dict(
                {
                    "0": conv2d(3, a, 3, stride=2, dtype=dtype, rngs=rngs),
                    "1": BatchNorm2d(a, dtype=dtype),
                    "3": conv2d(a, b, 3, dtype=dtype, rngs=rngs),
                    "4": BatchNorm2d(b, dtype=dtype),
                    "6": conv2d(b, c, 3, dtype=dtype, rngs=rngs),
                }
            )
        cin = stem_width(stem)  # deep128: 128, so layer1.0 gets a projection shortcut
        self.bn1 = BatchNorm2d(cin, dtype=dtype)
        widths = (64, 128, 256, 512)
        for i, (cout, stride) in enumerate(zip(widths, (1, 2, 2, 2)), start=1):
            blocks = [
                BasicBlock(cin, cout, stride, dtype=dtype, rngs=rngs),
                BasicBlock(cout, cout, 1, dtype=dtype, rngs=rngs),
            ]
            setattr(self, f"layer{i}", nnx.List(blocks))
            cin = cout

    def _stem(self, x: jax.Array) -> jax.Array:
        if self.stem == "torchvision":
            return self.conv1(x)
        c = self.conv1
        x = jax.nn.relu(c["1"](c["0"](x)))
        x = jax.nn.relu(c["4"](c["3"](x)))
        return c["6"](x)

    def stages(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """The four stage outputs (layer1..layer4: 1/4, 1/8, 1/16, 1/32 of the input)."""
        x = jax.nn.relu(self.bn1(self._stem(x)))
        x = max_pool_3x3s2(x)
        out = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                x = block(x)
            out.append(x)
        return tuple(out)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        _, feat8, _, feat32 = self.stages(x)
        return feat8, feat32


def max_pool_3x3s2(x: jax.Array) -> jax.Array:
    """``nn.MaxPool2d(3, 2, 1)``: reduce_window pads with -inf as torch does."""
    return nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
