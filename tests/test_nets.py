import torch


def test_mlp_dropout_acts_in_training_only_and_keeps_the_layer_names():
    from flowvae.nets import MLPDecoder

    torch.manual_seed(0)
    plain = MLPDecoder((1, 4, 4), 1, 3, [16, 16])
    dropped = MLPDecoder((1, 4, 4), 1, 3, [16, 16], dropout=0.5)
    assert plain.state_dict().keys() == dropped.state_dict().keys()  # checkpoints stay compatible
    dropped.load_state_dict(plain.state_dict())
    z = torch.randn(64, 3)
    dropped.eval()
    assert torch.equal(dropped(z), plain.eval()(z))
    dropped.train()
    a, b = dropped(z), dropped(z)
    assert not torch.equal(a, b)  # a fresh mask per pass
    h = dropped.features(z)
    assert 0.3 < (h == 0).float().mean().item() < 0.7  # about half the units of the last layer


# ----------------------------------------------------------------------------- made decoder


def _made_decoder(shape=(1, 2, 3), latent=3, hidden=(7, 7), params=1):
    from flowvae.nets import MADEDecoder

    torch.manual_seed(0)
    decoder = MADEDecoder(shape, params, latent, list(hidden)).double()
    with torch.no_grad():  # direct connections start at zero: give them weight to test them
        decoder.direct.weight.normal_()
    return decoder


def test_made_decoder_is_a_normalised_distribution_over_all_images():
    """Σ_x p(x|z) = 1 over all 2^6 binary 2x3 images, for each z: the masks make the product of
    the conditionals a distribution (a pixel seeing itself or a later pixel breaks this)."""
    import itertools

    from flowvae.likelihoods import Bernoulli

    decoder = _made_decoder()
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=6)), dtype=torch.float64)
    images = images.view(-1, 1, 2, 3)
    z = torch.randn(4, 1, 3, dtype=torch.float64).expand(4, len(images), 3)
    log_p = Bernoulli().log_prob(images, decoder(z, images))  # (4, 64)
    torch.testing.assert_close(log_p.logsumexp(-1), torch.zeros(4, dtype=torch.float64))


def test_made_decoder_output_i_depends_on_earlier_pixels_and_on_z_only():
    decoder = _made_decoder(shape=(2, 2, 2), hidden=(16,), params=2)  # 8 pixels, raster (c, h, w)
    z, x = torch.randn(3, dtype=torch.float64), torch.rand(1, 2, 2, 2, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda x: decoder(z, x.view(1, 2, 2, 2)).view(2, 8), x.flatten())
    earlier = torch.ones(8, 8).tril(-1).bool()  # [i, j]: j before i
    assert (jac[:, ~earlier] == 0).all() and (jac[:, earlier] != 0).all()
    jac_z = torch.autograd.functional.jacobian(lambda z: decoder(z, x).view(2, 8), z)
    assert (jac_z.abs().sum(-1) > 0).all()  # z reaches every pixel's parameters


def test_made_decoder_generates_from_its_own_conditionals():
    """generate() updates the first layer pixel by pixel; its means must be the conditionals the
    full forward pass gives for the sampled image, and it must sample each pixel from them."""
    from flowvae.likelihoods import Bernoulli

    decoder = _made_decoder(shape=(1, 4, 4), hidden=(24, 24))
    z = torch.randn(2000, 3, dtype=torch.float64)
    sample, mean = decoder.generate(z, Bernoulli())
    assert set(sample.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(mean, torch.sigmoid(decoder(z, sample)[:, 0]))
    # first pixel: a Bernoulli draw from its mean (5 standard errors of 2000 draws)
    p = mean[:, 0, 0, 0]
    assert abs((sample[:, 0, 0, 0] - p).mean()) < 5 * (p * (1 - p)).mean().sqrt() / 2000**0.5


def test_made_decoder_needs_equal_hidden_widths():
    import pytest

    from flowvae.nets import MADEDecoder

    with pytest.raises(ValueError, match="equal width"):
        MADEDecoder((1, 4, 4), 1, 3, [16, 8])
    with pytest.raises(ValueError, match="equal width"):
        MADEDecoder((1, 4, 4), 1, 3, [])
