"""Build-time only: save torchvision's ImageNet ResNet weights as safetensors into DIR.

Used by the Dockerfile when BAKE_IMAGENET_WEIGHTS=true, so the job can start from ImageNet
weights (train.init_weights) on a cluster that cannot reach the internet.
"""

import sys
from pathlib import Path

import torchvision
from safetensors.torch import save_file

target = Path(sys.argv[1])
target.mkdir(parents=True, exist_ok=True)
for name, weights in (("resnet34", "IMAGENET1K_V1"), ("resnet50", "IMAGENET1K_V2")):
    model = getattr(torchvision.models, name)(weights=weights)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(target / f"{name}-imagenet.safetensors"), metadata={"source": f"torchvision {weights}"})
    print(f"saved {target / f'{name}-imagenet.safetensors'}")
