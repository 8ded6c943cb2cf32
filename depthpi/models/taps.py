"""Feature-tap names: parsing, validation and block index ↔ layer path mapping.

A tap names one residual block's output inside a pose model by its module path,
``layer{i}.{j}.{kind}`` (the canonical name, the one recorded in manifests and logs), or
by the thesis' block count, ``block{k}.{kind}`` (an alias: the k-th block counted over
layer1..layer4 from 1; ResNet-50's block 13 is ``layer3.5``). ``kind`` is ``pre_relu``
(after the residual addition, before the block's final ReLU) or ``post_relu`` (the block
output). In the RGB-D teacher the branch blocks (layer1, layer2) carry a ``rgb.`` or
``depth.`` prefix (``depth.layer2.3.post_relu``); the trunk blocks keep the plain names,
so ``layer3.5.post_relu`` is the same position in a baseline and a teacher. ``fusion`` is
the fused layer2 feature.
"""
from __future__ import annotations

import re
from typing import NamedTuple

LAYER_DEPTHS: dict[str, tuple[int, int, int, int]] = {
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
}
KINDS = ("pre_relu", "post_relu")
BRANCHES = ("rgb", "depth")
FUSION = "fusion"
# Layers that sit in the teacher's branches; the rest form its shared trunk.
BRANCH_LAYERS = (1, 2)

_BLOCK = re.compile(r"^block(\d+)$")
_PATH = re.compile(r"^layer([1-4])\.(\d+)$")


class Tap(NamedTuple):
    """A resolved tap.

    Attributes:
        scope: ``""`` (baseline backbone or teacher trunk), ``"rgb"``, ``"depth"`` or
            ``"fusion"``.
        path: ``"layer{i}.{j}.{kind}"`` inside that scope (``""`` for fusion).
    """

    scope: str
    path: str

    @property
    def name(self) -> str:
        """The canonical name: ``layer3.5.post_relu``, ``depth.layer2.3.pre_relu``, ``fusion``."""
        return ".".join(part for part in (self.scope, self.path) if part)


def block_to_path(k: int, depths: tuple[int, ...]) -> str:
    """``block_to_path(13, (3, 4, 6, 3)) == "layer3.5"`` (k counts from 1)."""
    if not 1 <= k <= sum(depths):
        raise ValueError(f"block index {k}: expected 1..{sum(depths)} for layers {depths}")
    for i, n in enumerate(depths, start=1):
        if k <= n:
            return f"layer{i}.{k - 1}"
        k -= n
    raise AssertionError("unreachable")


def path_to_block(path: str, depths: tuple[int, ...]) -> int:
    """``path_to_block("layer3.5", (3, 4, 6, 3)) == 13``."""
    m = _PATH.match(path)
    if not m or int(m.group(2)) >= depths[int(m.group(1)) - 1]:
        raise ValueError(f"layer path {path!r}: expected layer<i>.<j> with j < depth of layer i {depths}")
    i, j = int(m.group(1)), int(m.group(2))
    return sum(depths[: i - 1]) + j + 1


def _block_names(depths: tuple[int, ...], layers: tuple[int, ...], prefix: str) -> list[str]:
    return [f"{prefix}layer{i}.{j}.{kind}" for i in layers for j in range(depths[i - 1]) for kind in KINDS]


def valid_taps(arch: str, teacher: bool = False) -> list[str]:
    """The canonical name of every tap a model of ``arch`` (baseline, or RGB-D teacher) has."""
    depths = LAYER_DEPTHS[arch]
    if not teacher:
        return _block_names(depths, (1, 2, 3, 4), "")
    names = []
    for branch in BRANCHES:
        names += _block_names(depths, BRANCH_LAYERS, f"{branch}.")
    return names + [FUSION] + _block_names(depths, (3, 4), "")


def canonical_tap(name: str, arch: str, teacher: bool = False) -> str:
    """The canonical name of tap ``name`` (``block13.post_relu`` → ``layer3.5.post_relu`` for a
    ResNet-50); raises ValueError as :func:`parse_tap`."""
    return parse_tap(name, arch, teacher).name


def same_tap(a: str, b: str, arch: str, teacher: bool = False) -> bool:
    """Whether ``a`` and ``b`` name one tap of a model of ``arch`` (False if either names none)."""
    try:
        return parse_tap(a, arch, teacher) == parse_tap(b, arch, teacher)
    except ValueError:
        return False


def block_alias(name: str, arch: str, teacher: bool = False) -> str | None:
    """The thesis' name of tap ``name`` (``layer3.5.post_relu`` → ``block13.post_relu``), None for fusion."""
    tap = parse_tap(name, arch, teacher)
    if tap.scope == FUSION:
        return None
    head, kind = tap.path.rsplit(".", 1)
    block = f"block{path_to_block(head, LAYER_DEPTHS[arch])}.{kind}"
    return f"{tap.scope}.{block}" if tap.scope else block


def _resolve_block(body: str, depths: tuple[int, ...]) -> tuple[int, str] | None:
    """``"block13.pre_relu"`` or ``"layer3.5.pre_relu"`` → (layer index, canonical path)."""
    head, _, kind = body.rpartition(".")
    if kind not in KINDS:
        return None
    m = _BLOCK.match(head)
    try:
        path = block_to_path(int(m.group(1)), depths) if m else head
        path_to_block(path, depths)
    except ValueError:
        return None
    return int(path[5]), f"{path}.{kind}"


def parse_tap(name: str, arch: str, teacher: bool = False) -> Tap:
    """Resolve a tap name for a model of ``arch``.

    Raises:
        ValueError: naming the tap and listing the valid names.
    """
    depths = LAYER_DEPTHS[arch]
    tap = _parse(name, depths, teacher)
    if tap is None:
        last3 = sum(depths[:3])
        raise ValueError(f"tap {name!r} is not valid for a {arch} {'teacher' if teacher else 'baseline'}; "
                         f"valid taps: {', '.join(valid_taps(arch, teacher))} (or a block by its count, blockK "
                         f"for K in 1..{sum(depths)}: block{last3} is {block_to_path(last3, depths)})")
    return tap


def _parse(name: str, depths: tuple[int, ...], teacher: bool) -> Tap | None:
    if teacher and name == FUSION:
        return Tap(FUSION, "")
    scope, body = "", name
    if teacher and name.split(".", 1)[0] in BRANCHES:
        scope, body = name.split(".", 1)
    resolved = _resolve_block(body, depths)
    if resolved is None:
        return None
    layer, path = resolved
    if teacher and (layer in BRANCH_LAYERS) != (scope in BRANCHES):
        return None  # a branch layer needs its branch prefix; a trunk layer must not have one
    return Tap(scope, path)


def group_taps(names: tuple[str, ...] | list[str], arch: str, teacher: bool = False) -> dict[str, dict[str, list[str]]]:
    """Group requested tap names by scope: ``{scope: {canonical path: [requested names]}}``.

    Both names of a tap may be asked for (``block13.post_relu`` and ``layer3.5.post_relu``);
    each requested name gets its own entry in the model's ``features`` dict.
    """
    groups: dict[str, dict[str, list[str]]] = {}
    for name in names:
        tap = parse_tap(name, arch, teacher)
        groups.setdefault(tap.scope, {}).setdefault(tap.path, []).append(name)
    return groups
