import torch

from gistnet import augmentation
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
