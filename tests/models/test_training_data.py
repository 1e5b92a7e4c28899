"""Supervision that follows the image: augmented geometry, study batches, CLI options."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.augment import AugmentConfig, Augmenter
from models.data import prepare_dataset, study_batch, view_batch
from models.supervision import MAX_VIEWS, option_value
from models.synth import generate_dataset

NAN = float("nan")


def _dot(h: int, w: int, x: int, y: int) -> torch.Tensor:
    img = torch.zeros(1, 1, h, w)
    img[0, 0, y, x] = 1.0
    return F.avg_pool2d(F.pad(img, (1, 1, 1, 1)), 3, 1)[0] * 9  # a 3x3 bright square


@pytest.mark.parametrize("seed", range(6))
def test_points_and_boxes_follow_the_augmented_image(seed: int) -> None:
    aug = Augmenter(AugmentConfig(p_flip=0.5, p_scale=1.0, p_rotate=1.0, p_translate=1.0,
                                  translate_fraction=0.1, zoom_in=(1.1, 1.3),
                                  zoom_out=(0.8, 0.9), contrast=(1.0, 1.0), noise_std=0.0))
    image = _dot(64, 64, 40, 20)
    out, boxes, points = aug.with_geometry(
        image, None, torch.Generator().manual_seed(seed),
        boxes=torch.tensor([[37.0, 17.0, 43.0, 23.0], [NAN] * 4]),
        points=torch.tensor([[40.0, 20.0], [NAN, NAN]]))
    assert boxes is not None and points is not None
    flat = int(torch.argmax(out[0]))
    bright = torch.tensor([flat % 64, flat // 64], dtype=torch.float32)
    assert torch.dist(bright, points[0]) < 1.6  # within the dot's pixel footprint
    assert boxes[0, 0] <= points[0, 0] <= boxes[0, 2] and boxes[0, 1] <= points[0, 1] <= boxes[0, 3]
    assert torch.isnan(boxes[1]).all() and torch.isnan(points[1]).all()


def test_the_keep_inside_box_stays_in_the_image() -> None:
    aug = Augmenter(AugmentConfig(p_scale=1.0, p_rotate=1.0, p_translate=1.0,
                                  translate_fraction=0.5, zoom_in=(1.8, 1.9)))
    keep = torch.tensor([4.0, 4.0, 60.0, 60.0])
    for seed in range(10):
        _, boxes, _ = aug.with_geometry(_dot(64, 64, 32, 32), keep,
                                        torch.Generator().manual_seed(seed),
                                        boxes=keep.view(1, 4).clone())
        assert boxes is not None
        assert boxes[0, 0] >= 0 and boxes[0, 1] >= 0 and boxes[0, 2] <= 63 and boxes[0, 3] <= 63


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory):
    root: Path = tmp_path_factory.mktemp("data")
    generate_dataset(root, studies=6, seed=1, size=96)
    return prepare_dataset(root, size=48)


def test_geometry_is_mapped_onto_the_input_grid(small_set) -> None:
    positives = [i for i, e in enumerate(small_set.entries) if e["points"]]
    assert positives, "the data set needs a view with a visible fracture"
    for i in positives:
        entry, view = small_set.entries[i], small_set.views[i]
        expected = view.transform.apply(entry["points"][0])
        assert torch.allclose(small_set.points[i, 0], torch.tensor(expected, dtype=torch.float32),
                              atol=1e-3)
        assert small_set.points[i, len(entry["points"]):].isnan().all()
        # the point lies inside its fracture box, on the input grid too
        x, y = small_set.points[i, 0]
        x0, y0, x1, y1 = small_set.boxes[i, 0]
        assert x0 <= x <= x1 and y0 <= y <= y1


def test_study_batches_pad_views_and_carry_the_study_label(small_set) -> None:
    studies = small_set.studies()
    uids = list(studies)[:3]
    batch = study_batch(small_set, uids)
    assert batch.images.shape[:2] == (3, MAX_VIEWS) and batch.mask is not None
    for n, uid in enumerate(uids):
        members = studies[uid]
        assert int(batch.mask[n].sum()) == len(members)
        assert int(batch.labels[n]) == int(small_set.entries[members[0]]["study_label"])
        assert torch.equal(batch.images[n, 0, 0], small_set.images[members[0]].float())
        assert (batch.images[n, len(members):] == 0).all()
    views = view_batch(small_set, [0, 1])
    assert views.images.shape == (2, 1, 48, 48) and views.mask is None


def test_model_options_from_the_command_line_are_typed() -> None:
    options = {"alpha": "0.25", "affine": "true", "kind": "kld", "k": "5"}
    assert option_value(options, "alpha", 0.1) == 0.25
    assert option_value(options, "affine", False) is True
    assert option_value(options, "kind", "mse") == "kld"
    assert option_value(options, "k", 3) == 5
    assert option_value(options, "missing", 7) == 7
    with pytest.raises(ValueError, match="alpha"):
        option_value({"alpha": "lots"}, "alpha", 0.1)
    with pytest.raises(ValueError, match="true or false"):
        option_value({"affine": "maybe"}, "affine", False)


def test_training_refuses_an_epoch_without_a_full_batch(small_set, tmp_path: Path) -> None:
    from models.train import TrainConfig, train

    positives = [i for i, e in enumerate(small_set.entries) if e["label"]][:1]
    negatives = [i for i, e in enumerate(small_set.entries) if not e["label"]]
    tiny = small_set.subset(positives + negatives)  # one positive: the sampler draws 2 views
    config = TrainConfig(stages=1, transition_channels=8, input_size=48, batch_size=4,
                         epochs=1, val_fraction=0.0)
    with pytest.raises(ValueError, match="no full batch"):
        train(config, tiny, tmp_path / "run", data_description={})



def test_best_checkpoint_comes_only_from_epochs_the_type_allows(
    small_set, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A type may rule epochs out of best.pt (two_stage: its stage-1-only epochs)."""
    import dataclasses

    from models import registry
    from models.train import TrainConfig, train

    base = registry.model_type_spec("global_pool")
    assert base.training is not None
    allowed = 3
    spec = dataclasses.replace(base, training=dataclasses.replace(
        base.training, selectable=lambda ctx: ctx.epoch == allowed))
    monkeypatch.setitem(registry._MODEL_TYPES, "selective_test", spec)
    config = TrainConfig(model_type="selective_test", stages=1, transition_channels=8,
                         input_size=48, batch_size=4, epochs=4, val_fraction=0.34,
                         balance="weights", lr=3e-3)
    result = train(config, small_set, tmp_path / "run", data_description={})
    history = result.summary["history"]
    best = torch.load(result.best_checkpoint, weights_only=True)
    assert len(best["metadata"]["training"]["history"]) == allowed
    assert result.summary["best_val_score"] == history[allowed - 1]["val_auroc"]
    # the rule mattered: without it the first epoch with the top score would have been kept
    scores = [h["val_auroc"] for h in history]
    assert scores.index(max(scores)) != allowed - 1


def test_parallel_preparation_gives_the_same_set(small_set) -> None:
    again = prepare_dataset(small_set.root, size=48, workers=2)
    assert torch.equal(again.images, small_set.images)
    assert torch.equal(again.labels, small_set.labels)
    assert torch.equal(again.boxes.nan_to_num(-1.0), small_set.boxes.nan_to_num(-1.0))
    assert [e["sop_instance_uid"] for e in again.entries] == \
        [e["sop_instance_uid"] for e in small_set.entries]
    with pytest.raises(ValueError, match="workers"):
        prepare_dataset(small_set.root, size=48, workers=0)
