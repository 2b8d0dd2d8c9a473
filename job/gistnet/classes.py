"""The classes of a run: how ``data.classes``, ``data.positive_class`` and ``data.negative_class``
resolve, and the one rule for label indices (``head_order``) that training, serving and the
evidence share. Below ``config`` (it imports only ``errors``)."""

from __future__ import annotations

from typing import Any

from gistnet.errors import ConfigError

MIN_CLASSES, MAX_CLASSES = 2, 10


def head_order(classes, positive: str) -> tuple[str, ...]:
    """The one rule for label indices: index i of the network's output (and of a label) is
    ``head_order(...)[i]``: every class other than the positive one in ``data.classes`` order,
    then the positive class last. With two classes that is negative 0, positive 1: the binary
    encoding gistnet has always had, byte for byte."""
    return tuple(c for c in classes if c != positive) + (positive,)


def endpoint_names(classes, positive: str, negative: str) -> tuple[str, str]:
    """The endpoint's two sides as binary evidence names them: (positive, negative) with two
    classes, (positive, ``non-<positive>``) with more."""
    return (positive, negative if len(tuple(classes)) == 2 else f"non-{positive}")


def resolve(merged: dict[tuple[str, str], Any], default_positive: str, default_negative: str) -> None:
    """How ``data.classes`` and ``data.negative_class`` interact (docs/configuration.md), in place:
    without ``data.classes`` the classes are ``[positive_class, negative_class]`` (every config
    written before K classes reads as it did); with two ``data.classes`` the negative class is the
    one that is not positive (a ``negative_class`` naming another is an error); with more than two
    there is no negative class (the endpoint is the positive class against every other one), so
    a non-empty ``negative_class`` is an error and it resolves to ``""``."""
    positive = merged.get(("data", "positive_class"), default_positive)
    negative = merged.get(("data", "negative_class"))
    if ("data", "classes") not in merged:
        merged[("data", "classes")] = (positive, default_negative if negative is None else negative)
        return
    classes = tuple(merged[("data", "classes")])
    others = [c for c in classes if c != positive]
    if not MIN_CLASSES <= len(classes) <= MAX_CLASSES or len(others) == len(classes):
        return  # check() names the count, or the positive class missing from the list
    if len(classes) == 2:
        if negative and negative != others[0]:
            raise ConfigError(f"data.negative_class {negative!r} is not the class of data.classes "
                              f"[{', '.join(classes)}] other than data.positive_class {positive!r}")
        merged[("data", "negative_class")] = others[0]
        return
    if negative:
        raise ConfigError(f"data.negative_class {negative!r} is for two classes; data.classes names {len(classes)}, "
                          f"so the endpoint is {positive!r} against every other class: leave negative_class unset")
    merged[("data", "negative_class")] = ""


def check(classes: tuple[str, ...], positive: str, negative: str) -> None:
    """ConfigError (exit 3) for a class list the run cannot use."""
    listed = f"data.classes [{', '.join(classes)}]"
    if not MIN_CLASSES <= len(classes) <= MAX_CLASSES:
        raise ConfigError(f"data.classes must name {MIN_CLASSES} to {MAX_CLASSES} classes, got {len(classes)}")
    if len(set(classes)) != len(classes):
        raise ConfigError(f"data.classes names a class twice: {', '.join(classes)}")
    for name in classes:
        if not name or "/" in name:
            raise ConfigError(f"class folder name {name!r} must be non-empty and contain no '/'")
    if positive not in classes:
        raise ConfigError(f"data.positive_class {positive!r} is not one of {listed}")
    if len(classes) == 2 and negative not in classes:
        raise ConfigError(f"data.negative_class {negative!r} is not one of {listed}")
