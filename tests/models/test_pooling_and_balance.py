"""Global pooling (seed 000 §II.C.3) and class balancing (seed 000 eq. 2, seed 004 eq. 4.3)."""

from collections import Counter

import pytest
import torch

from models.nets import GlobalPool, GlobalPoolClassifier, fracture_heatmap, lse_pool
from models.sampling import balanced_sampler, class_weights, sample_probabilities


@pytest.fixture
def maps() -> torch.Tensor:
    return torch.randn(3, 5, 7, 9, generator=torch.Generator().manual_seed(0))


def test_lse_tends_to_max_as_r_grows(maps: torch.Tensor) -> None:
    peak = maps.amax(dim=(2, 3))
    gaps = [float((peak - lse_pool(maps, r)).abs().max()) for r in (1.0, 10.0, 100.0, 1e4)]
    assert gaps == sorted(gaps, reverse=True)
    assert gaps[-1] < 1e-3


def test_lse_tends_to_mean_as_r_shrinks(maps: torch.Tensor) -> None:
    mean = maps.mean(dim=(2, 3))
    gaps = [float((mean - lse_pool(maps, r)).abs().max()) for r in (1.0, 0.1, 1e-3, 1e-6)]
    assert gaps == sorted(gaps, reverse=True)
    assert gaps[-1] < 1e-4


@pytest.mark.parametrize("r", [1.0, 1e3, 1e8])
def test_lse_finite_for_large_inputs_and_r(r: float) -> None:
    x = torch.full((1, 2, 4, 4), 1e4)
    x[0, 0, 0, 0] = 3e4
    out = lse_pool(x, r)
    assert torch.isfinite(out).all()
    assert 1e4 <= float(out[0, 0]) <= 3e4
    assert float(out[0, 1]) == pytest.approx(1e4)


def test_lse_gradient_finite_for_large_r(maps: torch.Tensor) -> None:
    x = (maps * 1e3).requires_grad_()
    lse_pool(x, 1e6).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_lse_rejects_bad_r(maps: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="r"):
        lse_pool(maps, 0.0)
    with pytest.raises(ValueError, match="pooling"):
        GlobalPool("median")


def test_avg_pooled_logits_equal_mean_cam() -> None:
    # With AVG pooling the prediction layer is linear, so the image logits are the mean of the
    # class activation maps before upsampling: the CAM is faithful to the decision.
    torch.manual_seed(0)
    net = GlobalPoolClassifier(pooling="avg", stages=2, transition_channels=16).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        maps = net.transition_maps(x)
        cams = torch.einsum("cd,ndhw->nchw", net.prediction.weight, maps)
        cams = cams + net.prediction.bias.view(1, -1, 1, 1)
        logits, upsampled = net.forward_with_cam(x)
    torch.testing.assert_close(logits, cams.mean(dim=(2, 3)), rtol=1e-4, atol=1e-5)
    assert upsampled.shape == (2, 2, 64, 64)


def test_class_weights_are_z_over_frequency() -> None:
    labels = [0] * 6 + [1] * 3 + [2] * 1
    w = class_weights(labels, 3)
    z = len(labels) / 3
    torch.testing.assert_close(w, torch.tensor([z / 6, z / 3, z / 1]))
    # A balanced set gets plain cross entropy (w_c = 1).
    torch.testing.assert_close(class_weights([0, 1, 0, 1], 2), torch.ones(2))


def test_sampler_probabilities_equal_seed004_eq_4_3() -> None:
    labels = [1] * 3 + [0] * 9  # n_b = 3 broken, n_nb = 9 not broken
    p = sample_probabilities(labels, 2)
    n_b, n_nb = 3, 9
    expected = torch.tensor([n_nb / (2 * n_b * n_nb)] * 3 + [n_b / (2 * n_b * n_nb)] * 9,
                            dtype=torch.float64)
    torch.testing.assert_close(p, expected)
    assert float(p.sum()) == pytest.approx(1.0)


def test_sampler_draws_balanced_epochs_without_repeats() -> None:
    labels = [1] * 20 + [0] * 180
    sampler = balanced_sampler(labels, 2, generator=torch.Generator().manual_seed(3))
    drawn = list(sampler)
    assert len(drawn) == 40  # 2 * n_min
    assert len(set(drawn)) == len(drawn)  # no sample twice in one epoch
    counts = Counter(labels[i] for i in drawn)
    assert 12 <= counts[1] <= 28  # about half of each, in expectation 20/20


def test_lse_stays_finite_under_bfloat16_autocast() -> None:
    x = torch.randn(2, 4, 32, 32) * 5
    x[:, :, 3, 3] = 40.0  # one hot spot in a large map: the rest rounds expm1 to -1 in bf16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lse_pool(x.bfloat16(), 10.0)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, lse_pool(x, 10.0), atol=0.5, rtol=0.02)


def test_heatmap_peaks_at_the_cam_peak_with_the_image_probability() -> None:
    g = torch.Generator().manual_seed(3)
    cams = torch.randn(4, 3, 20, 24, generator=g)
    cams[:, 1, 7, 11] += 8.0  # a strong fracture response at (row 7, col 11)
    probs = torch.softmax(torch.randn(4, 3, generator=g), dim=1)
    heat = fracture_heatmap(cams, probs)
    assert heat.shape == (4, 20, 24)
    p = 1.0 - probs[:, 0]
    assert torch.allclose(heat.amax(dim=(1, 2)), p)
    for i in range(4):
        assert divmod(int(heat[i].argmax()), 24) == (7, 11)
    assert (heat >= 0).all() and (heat <= p.view(-1, 1, 1) + 1e-6).all()


def test_a_view_called_normal_gets_a_faint_heatmap() -> None:
    # A per-pixel softmax would be ~1 wherever the normal map is low; the heatmap is not.
    cams = torch.zeros(1, 2, 16, 16)
    cams[0, 0] = -10.0  # the normal map is low everywhere...
    cams[0, 1, 4:6, 4:6] = 2.0  # ...and the fracture map has a weak bump
    probs = torch.tensor([[0.97, 0.03]])
    heat = fracture_heatmap(cams, probs)
    assert float(heat.max()) == pytest.approx(0.03)
    assert (heat < 0.5).all()
    flat = fracture_heatmap(torch.ones(1, 2, 8, 8), torch.tensor([[0.2, 0.8]]))
    assert (flat == 0).all()  # a flat map carries no location
