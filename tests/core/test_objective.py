"""The recipe's objective: sigma range, the noising formula, timestep, masked MSE, weighting options."""

from __future__ import annotations

import pytest
import torch

from core.objective import Objective


def test_uniform_sigma_is_the_recipe_range():
    s = Objective().sample_sigma(200_000, torch.Generator().manual_seed(0))
    assert s.dtype == torch.float32
    assert float(s.min()) >= 0.001 and float(s.max()) <= 1.0
    assert abs(float(s.mean()) - 0.5005) < 0.003  # mean of U(0.001, 1)
    assert abs(float(s.std()) - 0.999 / 12**0.5) < 0.003


def test_shifted_and_logit_normal_move_mass():
    def g():
        return torch.Generator().manual_seed(1)

    shifted = Objective(sigma_dist="shifted", shift=3.0).sample_sigma(100_000, g())
    assert float(shifted.mean()) > 0.65  # shift 3 pushes towards high noise
    ln = Objective(sigma_dist="logit_normal", logit_mean=1.0).sample_sigma(100_000, g())
    assert 0.001 <= float(ln.min()) and float(ln.max()) <= 1.0
    assert float(ln.median()) == pytest.approx(0.001 + 0.999 * torch.sigmoid(torch.tensor(1.0)).item(), abs=0.01)


def test_noise_formula_and_timestep():
    x0 = torch.rand(2, 5, 3072) * 2 - 1
    obj = Objective()
    z, t, sigma = obj.noise(x0, torch.Generator().manual_seed(3))
    # Replay the same generator: sigma first, then eps.
    g = torch.Generator().manual_seed(3)
    s = obj.sample_sigma(2, g)
    eps = torch.randn(x0.shape, generator=g)
    torch.testing.assert_close(sigma, s)
    torch.testing.assert_close(z, (1 - s.view(-1, 1, 1)) * x0 + s.view(-1, 1, 1) * 8.0 * eps)
    torch.testing.assert_close(t, 1 - s)


def test_loss_counts_only_image_positions_of_padded_rows():
    torch.manual_seed(0)
    x0 = torch.randn(2, 4, 3072)
    # Row 0 has 3 text positions, row 1 has 5 (right-padded): image tokens sit at different offsets.
    x_pred = torch.full((2, 9, 3072), 1e6)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[0, 3:7] = True
    mask[1, 5:9] = True
    x_pred[0, 3:7] = x0[0] + 0.5
    x_pred[1, 5:9] = x0[1] - 1.0
    loss = Objective().loss(x_pred, x0, torch.tensor([0.3, 0.9]), mask=mask)
    assert loss.dtype == torch.float32
    assert float(loss) == pytest.approx((0.25 + 1.0) / 2, rel=1e-6)


def test_loss_is_float32_from_bf16_inputs():
    x0 = torch.randn(1, 3, 3072).bfloat16()
    loss = Objective().loss(x0 + 1, x0, torch.tensor([0.5]))
    assert loss.dtype == torch.float32 and float(loss) == pytest.approx(1.0, rel=1e-2)


def test_velocity_weighting_equals_velocity_mse():
    torch.manual_seed(0)
    x0 = torch.randn(3, 4, 3072)
    obj = Objective(weighting="velocity")
    sigma = torch.tensor([0.05, 0.4, 0.9])
    z, _, _ = obj.noise(x0, torch.Generator().manual_seed(0), sigma=sigma)
    x_pred = x0 + 0.1 * torch.randn_like(x0)
    # The sampler's velocity: v = (x_pred - z) / sigma; the target velocity uses the true x0.
    v_pred = (x_pred - z) / sigma.view(-1, 1, 1)
    v_true = (x0 - z) / sigma.view(-1, 1, 1)
    expected = ((v_pred - v_true) ** 2).mean()
    assert float(obj.loss(x_pred, x0, sigma)) == pytest.approx(float(expected), rel=1e-4)
    # At tiny sigma the weight is clipped instead of reaching 1/sigma^2 = 1e6.
    w = obj.weights(torch.tensor([0.001]))
    assert float(w) == pytest.approx(1e4)


def test_bad_options_and_shapes_are_named():
    with pytest.raises(ValueError, match="sigma_dist"):
        Objective(sigma_dist="beta")
    with pytest.raises(ValueError, match="weighting"):
        Objective(weighting="snr")
    with pytest.raises(ValueError, match="mask marks"):
        Objective().loss(
            torch.zeros(1, 5, 8),
            torch.zeros(1, 3, 8),
            torch.tensor([0.5]),
            mask=torch.tensor([[True, True, False, False, False]]),
        )
    with pytest.raises(ValueError, match="patch tokens"):
        Objective().noise(torch.zeros(1, 3, 64, 64), torch.Generator())
