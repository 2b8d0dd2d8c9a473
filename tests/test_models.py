"""The one model factory: every caller's network comes from models.build_model."""

import torch

from gistnet import models
from gistnet.training import train


def test_a_seeded_untrained_network_is_reproducible_and_leaves_the_global_random_state_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b = models.build_model("resnet34", seed=5), models.build_model("resnet34", seed=5)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c = models.build_model("resnet34", seed=6)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
    assert a.fc.out_features == 2 and type(a) is type(train.build_model("resnet34"))
