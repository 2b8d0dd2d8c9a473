"""Units of work and their aggregation, without training: folds see only their training part,
missing units are named, the report is byte-identical however often it is aggregated."""

from pathlib import Path

import pytest
import torch

from gistnet import config
from gistnet.errors import EXIT_LEASED, ConfigError, LeaseHeld
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




def _rank_1(tmp_path, monkeypatch, decided: dict):
    """A unit on rank 1 of 2, rank 0's lease decision broadcast as ``decided``; what reached
    ``_train_unit`` (and the pointer it got) is returned in ``trained``."""
    import types

    from gistnet.data.runs import Unit
    from gistnet.data.storage import LocalStore
    from gistnet.training import distributed

    out = LocalStore(tmp_path / "run")
    out.write_bytes("resnet34/checkpoint.json", b'{"key": "resnet34/checkpoint-epoch0001.pt", "epoch": 1}')
    trained = []
    monkeypatch.setattr(distributed, "broadcast", lambda value, world: decided, raising=False)
    monkeypatch.setattr(units, "_train_unit", lambda *args, **kwargs: trained.append(args[-1]) or "trained")
    ctx = types.SimpleNamespace(out=out, world=distributed.World(2, 1, 1), metrics=None,
                                config=config.load_config(None, {}, environ={}))
    return lambda: units.train_unit(ctx, Unit(None, "resnet34"), None, None, 4), trained, out


def test_under_ddp_every_rank_follows_rank_0s_lease_decision_before_reading_a_checkpoint(tmp_path, monkeypatch):
    """Rank 1 never decides for itself: a unit rank 0 found finished meanwhile is not trained
    on rank 1 either; a lease rank 0 could not take stops rank 1 with the same exit code; and
    rank 1 resumes from the pointer rank 0 read under the lease, not from what it would read."""
    newer = {"key": "resnet34/checkpoint-epoch0007.pt", "epoch": 7, "sha256": "0" * 64, "bytes": 1}
    train_unit, trained, out = _rank_1(tmp_path / "a", monkeypatch, {"finished": True, "pointer": newer})
    assert train_unit() is None and trained == []
    train_unit, trained, out = _rank_1(tmp_path / "b", monkeypatch, {"finished": False, "pointer": newer})
    assert train_unit() == "trained" and trained == [newer]
    assert not out.exists("resnet34/lease.json")  # rank 1 takes no lease
    held = {"error": "resnet34 is being trained by pod-1", "kind": "LeaseHeld", "exit_code": 10}
    train_unit, trained, out = _rank_1(tmp_path / "c", monkeypatch, held)
    with pytest.raises(LeaseHeld, match="being trained by pod-1") as stopped:
        train_unit()
    assert stopped.value.exit_code == EXIT_LEASED and trained == []


def test_initial_weights_that_do_not_exist_are_a_config_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"train.init_weights: .*w.safetensors does not exist"):
        units.local_weights(str(tmp_path / "w.safetensors"), config.Config(), str(tmp_path))


def test_initial_weights_in_s3_are_downloaded_to_scratch_under_a_name_not_taken_from_the_key(
        s3_env, bucket, s3_client, tmp_path):
    s3_client.put_object(Bucket=bucket, Key="weights/w.safetensors", Body=b"weights")
    local = units.local_weights(f"s3://{bucket}/weights/w.safetensors", config.Config(), str(tmp_path))
    assert Path(local).parent.parent == tmp_path and Path(local).name == "init.safetensors"
    assert Path(local).read_bytes() == b"weights"
