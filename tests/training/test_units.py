"""Units of work and their aggregation, without training: folds see only their training part,
missing units are named, the report is byte-identical however often it is aggregated."""


import torch

from gistnet import config
from gistnet.data import dataset, split
from gistnet.training import units

NAMES = ("GIST", "LM")


def image_set(n_per_class=9, size=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n = 2 * n_per_class
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)
    labels = torch.tensor([1] * n_per_class + [0] * n_per_class)
    return dataset.ImageSet([f"{'GIST' if y else 'LM'}/{i:02d}.png" for i, y in enumerate(labels.tolist())],
                            images, labels)


def test_no_augmented_copy_of_a_validation_image_reaches_training():
    images = image_set()
    cfg = config.load_config(None, {"split.method": "kfold", "split.folds": 3, "augmentation.mode": "paper"},
                             environ={})
    plan = split.make_plan(images.keys, images.labels.numpy(), [], cfg.split, 0, NAMES)
    for part in plan.parts:
        fold = units.prepare_fold(images, part, cfg)
        drawn_from = fold.tensors.train_set  # the paper's 6x set, made batch by batch from these originals only
        assert len(drawn_from) == 6 * len(part.train) and len(fold.train_sources) == len(part.train)
        assert set(fold.train_sources) == set(part.train) and not set(fold.train_sources) & set(part.val)
        assert fold.val_set.keys == part.val
        assert torch.equal(drawn_from.images, images.subset(part.train).images)
        # and on the pixels: no row of the whole augmented epoch is a validation image
        drawn_from.prepare(torch.arange(len(drawn_from)), len(drawn_from))
        rows, labels = drawn_from.batch(0, len(drawn_from))
        assert len(rows) == 6 * len(part.train)
        torch.testing.assert_close(rows[:len(part.train)], drawn_from.images.float().div(255))  # op 0: originals
        train_rows = rows.flatten(1)
        for image in fold.val_set.images.float().div(255).flatten(1):
            assert not torch.isclose(train_rows, image, atol=1e-6).all(dim=1).any()


