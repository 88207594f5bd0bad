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
