from pathlib import Path

import pytest
import torch

from gistnet.data import augmentation
from gistnet.config import AugmentationConfig


def batch(n=6, size=32):
    g = torch.Generator().manual_seed(0)
    return (torch.rand(n, 3, size, size, generator=g) * 255).to(torch.uint8)


def test_paper_expansion_is_six_fold_and_keeps_originals():
    images = batch(113 // 10)
    labels = torch.arange(len(images)) % 2
    out, out_labels, names = augmentation.expand_paper(images, labels, AugmentationConfig(), seed=0, chunk=4)
    assert out.shape == (6 * len(images), 3, 32, 32) and out.dtype == torch.uint8
    assert torch.equal(out[: len(images)], images)
    assert torch.equal(out_labels, labels.repeat(6))
    assert names[: len(images)] == ["original"] * len(images)
    assert names[-1] == "sigmoid_contrast"
    flipped = out[2 * len(images): 3 * len(images)]
    assert torch.equal(flipped, images.flip(-1))
    for k in range(1, 6):  # every operation changes the images
        assert not torch.equal(out[k * len(images): (k + 1) * len(images)], images)


def test_paper_expansion_is_deterministic_for_a_seed():
    images = batch()
    labels = torch.zeros(len(images), dtype=torch.long)
    a = augmentation.expand_paper(images, labels, AugmentationConfig(), seed=3)[0]
    b = augmentation.expand_paper(images, labels, AugmentationConfig(), seed=3)[0]
    c = augmentation.expand_paper(images, labels, AugmentationConfig(), seed=4)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_online_batch_changes_some_images_and_keeps_range():
    x = augmentation.to_float(batch(16))
    out = augmentation.online_batch(x, AugmentationConfig(online_probability=0.5), torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert not torch.equal(out, x)
    none = augmentation.online_batch(x, AugmentationConfig(online_probability=0.0), torch.Generator().manual_seed(0))
    assert torch.equal(none, x)


def test_examples_figure(tmp_path):
    path = tmp_path / "fig.png"
    augmentation.examples_figure(batch(3, 48), AugmentationConfig(), seed=0, path=path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ online mode: same output, no host sync

def reference_online_batch(batch, cfg, gen):
    """online_batch as it was before it avoided host syncs (boolean indexing, a clone per
    operation): the new one must give the same images from the same generator."""
    from kornia import enhance
    from kornia.geometry import transform

    def rotation(x):
        return transform.rotate(x, ((torch.rand(x.shape[0], generator=gen) * 2 - 1) * cfg.rotation_degrees).to(x.device))

    ops = {"rotation": rotation,
           "flip": lambda x: transform.hflip(x) if cfg.flip == "horizontal" else transform.vflip(x),
           "clahe": lambda x: enhance.equalize_clahe(x, clip_limit=cfg.clahe_clip_limit,
                                                     grid_size=(cfg.clahe_grid, cfg.clahe_grid)),
           "log_contrast": lambda x: enhance.adjust_log(x, gain=cfg.log_gain),
           "sigmoid_contrast": lambda x: enhance.adjust_sigmoid(x, cutoff=cfg.sigmoid_cutoff, gain=cfg.sigmoid_gain)}
    out = batch
    for name in ("rotation", "flip", "clahe", "log_contrast", "sigmoid_contrast"):
        chosen = torch.rand(out.shape[0], generator=gen) < cfg.online_probability
        if chosen.any():
            chosen = chosen.to(out.device)
            out = out.clone()
            out[chosen] = ops[name](out[chosen])
    return out


@pytest.mark.parametrize("whole_batch", [True, False], ids=["where", "index"])
@pytest.mark.parametrize("probability, flip", [(0.4, "horizontal"), (1.0, "vertical")])
def test_online_batch_equals_the_boolean_index_reference(probability, flip, whole_batch):
    cfg = AugmentationConfig(online_probability=probability, flip=flip, rotation_degrees=25.0, clahe_grid=4)
    x = augmentation.to_float(batch(8))
    for seed in range(2):
        new_gen, old_gen = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        for _ in range(2):  # consecutive batches: the generator must advance the same way
            new = augmentation.online_batch(x, cfg, new_gen, whole_batch=whole_batch)
            assert torch.equal(new, reference_online_batch(x, cfg, old_gen))
        assert torch.equal(new_gen.get_state(), old_gen.get_state())


@pytest.mark.parametrize("whole_batch", [True, False], ids=["where", "index"])
def test_online_batch_makes_one_host_copy_and_no_data_dependent_device_op(whole_batch):
    """On the meta device (no data) a boolean index or .item() would raise; the random draws
    reach the device in one copy, whatever the number of operations applied."""
    from tests.conftest import host_device_copies

    x = torch.rand(8, 3, 32, 32, device="meta")
    copies = host_device_copies(augmentation.online_batch, x, AugmentationConfig(online_probability=1.0),
                                torch.Generator().manual_seed(0), whole_batch=whole_batch)
    ours = [c for c in copies if "gistnet" in Path(c[2]).parts]
    assert ours == [("cpu", "meta", augmentation.__file__)]
    assert not [c for c in copies if c[1] == "cpu"]  # nothing comes back to the host


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_online_batch_does_not_sync_on_cuda():
    cfg = AugmentationConfig(online_probability=0.5)
    x = augmentation.to_float(batch(16)).cuda()
    gen = torch.Generator().manual_seed(0)
    augmentation.online_batch(x, cfg, gen)  # warm-up: kernels, pinned memory pool
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        augmentation.online_batch(x, cfg, gen)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("channels, batch_size", [(1, 5), (3, 8)])
def test_paper_set_on_the_fly_equals_the_materialized_expansion(channels, batch_size):
    images = batch(7, 32)[:, :channels].contiguous()
    labels = torch.arange(len(images)) % 2
    cfg = AugmentationConfig()
    expanded, expanded_labels, _ = augmentation.expand_paper(images, labels, cfg, seed=5, chunk=3)
    paper = augmentation.PaperSet(images, labels, cfg, seed=5)
    assert len(paper) == len(expanded) and torch.equal(paper.labels, expanded_labels)
    order = torch.randperm(len(paper), generator=torch.Generator().manual_seed(1))
    paper.prepare(order, batch_size)
    for start in range(0, len(paper), batch_size):
        stop = min(start + batch_size, len(paper))
        x, y = paper.batch(start, stop)
        idx = order[start:stop]
        assert torch.equal(x, augmentation.to_float(expanded[idx])), (start, stop)
        assert torch.equal(y, expanded_labels[idx])


def test_gray_images_augment_like_their_three_channel_copies():
    gray = batch(4, 32)[:, :1].contiguous()
    cfg = AugmentationConfig()
    one = augmentation.expand_paper(gray, torch.zeros(4, dtype=torch.long), cfg, seed=2)[0]
    three = augmentation.expand_paper(gray.expand(-1, 3, -1, -1).contiguous(), torch.zeros(4, dtype=torch.long),
                                      cfg, seed=2)[0]
    assert torch.equal(one.expand(-1, 3, -1, -1), three)
