"""The one place a network is built: a torchvision ResNet by name with a 2-class head.

Training, ``predict``/``export`` (through ``serving.trained``) and the saliency check's
untrained reference network all build their model here, so "the same architecture" means the
same code. Weights are read without executing pickled code (safetensors, or ``torch.load``
with ``weights_only=True``).
"""

from __future__ import annotations

import logging

import torch
import torchvision

from gistnet.errors import ConfigError

log = logging.getLogger(__name__)


def load_state_dict_file(path: str) -> dict[str, torch.Tensor]:
    """Weights from safetensors or a torch file, never executing pickled code."""
    from safetensors.torch import load_file

    with open(path, "rb") as f:
        magic = f.read(8)
    try:
        if path.endswith(".safetensors"):
            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to parse is the file's fault
        raise ConfigError(f"{path}: not loadable as weights without executing code ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200]})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a gistnet checkpoint
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path}: expected a state dict of tensors (file starts {magic[:4]!r})")
    return state


def build_model(name: str, pretrained: bool = False, init_weights: str | None = None,
                seed: int | None = None, num_classes: int = 2) -> torch.nn.Module:
    """A torchvision ResNet ``name`` (resnet34 | resnet50) with a ``num_classes`` head.

    ``pretrained``: torchvision's ImageNet weights for everything but the head (they must be in
    torchvision's cache or downloadable); ``init_weights``: a local weights file (ImageNet or
    ours), its tensors of matching shape loaded; neither: an untrained network, initialised as
    torchvision does, from ``seed`` when given (without touching the global random state).
    """
    if seed is None:
        model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    if pretrained:
        imagenet = getattr(torchvision.models, name)(weights="DEFAULT").state_dict()
        model.load_state_dict({k: v for k, v in imagenet.items() if not k.startswith("fc.")}, strict=False)
    if init_weights:
        state = load_state_dict_file(init_weights)
        own = model.state_dict()
        compatible = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        missing = [k for k in own if k not in compatible]
        if len(compatible) < len(own) // 2:
            raise ConfigError(f"{init_weights}: only {len(compatible)} of {len(own)} tensors match {name}")
        model.load_state_dict(compatible, strict=False)
        log.info("%s: loaded %d tensors from %s (%d left at init: %s)", name, len(compatible), init_weights,
                 len(missing), ", ".join(missing[:4]))
    return model
