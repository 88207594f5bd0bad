"""The hierarchical ResNet VAE (model.type=hierarchical): autoregressive masks, free bits, the flat
interface's consistency, shapes, learning, estimators and the CLI end to end."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from flowvae.arconv import ARConvNet, channel_mask
from flowvae.checkpoint import CheckpointError, load_run, save_atomic
from flowvae.config import Config, ModelConfig
from flowvae.core import ElboTerms
from flowvae.estimators import ESTIMATORS, elbo, evaluate, iwae
from flowvae.hierarchical import BLOCK_POSTERIORS, HierarchicalBlock, HierarchicalVAE
from flowvae.model import build_model, hierarchical_spec
from flowvae.optim import train_step, training_loss

TINY = dict(type="hierarchical", n_h=6, n_z=2, depth_ar=1)



def tiny(shape=(1, 8, 8), binary=True, dtype=torch.float64, **overrides) -> HierarchicalVAE:
    cfg = ModelConfig(**{**TINY, "depths": [1, 1], "posterior": "down-iaf", **overrides})
    return build_model(cfg, shape, binary).to(dtype)


def images(n=4, shape=(1, 8, 8), binary=True, seed=0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(n, *shape, generator=g, dtype=dtype)
    return torch.bernoulli(p, generator=g) if binary else torch.round(p * 255) / 255


# ----------------------------------------------------------------------------- masks


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_ar_conv_net_is_strictly_triangular_in_channel_order(depth):
    torch.manual_seed(depth)
    n_z, hidden, size = 4, 6, 3
    net = ARConvNet(n_z, hidden, depth, outputs=2).double()
    for p in net.parameters():  # random biases and scales too, so nothing is zero by accident
        p.data.normal_()
    context = torch.randn(1, hidden, size, size, dtype=torch.float64) if depth else None
    z = torch.randn(1, n_z, size, size, dtype=torch.float64)
    for out in range(2):
        jac = torch.autograd.functional.jacobian(lambda z, out=out: net(z, context)[out], z)
        jac = jac.reshape(n_z, size * size, n_z, size * size)  # (c_out, pixel, c_in, pixel)
        for c in range(n_z):
            assert torch.all(jac[c, :, c:, :] == 0), f"output channel {c} sees input channels >= {c}"
            if c > 0:  # but it does see the earlier channels, at its own pixel and its neighbours'
                assert jac[c, 4, :c, 4].abs().sum() > 0 and jac[c, 4, :c, 1].abs().sum() > 0


def autoregressive_order(n_z: int, size: int, mask: str) -> torch.Tensor:
    """Flat (channel-major) positions of a (n_z, size, size) tensor, sorted into the order the
    masks make autoregressive: channels (``channel``), or reverse raster pixels then channels."""
    c, p = torch.meshgrid(torch.arange(n_z), torch.arange(size * size), indexing="ij")
    key = c if mask == "channel" else (size * size - 1 - p) * n_z + c
    return key.flatten().argsort(stable=True)


def reference_conv_ar_mask(n_in: int, n_out: int, zerodiagonal: bool, k: int = 3) -> np.ndarray:
    """openai/iaf's ``get_conv_ar_mask`` (tf_utils/layers.py, with ``get_linear_ar_mask``) in
    numpy, as written there (Python 2 ``/`` on ints is ``//``), transposed to torch's
    (out, in, kh, kw) weight layout."""
    assert n_in % n_out == 0 or n_out % n_in == 0
    linear = np.ones([n_in, n_out], dtype=np.float32)
    if n_out >= n_in:
        g = n_out // n_in
        for i in range(n_in):
            linear[i + 1 :, i * g : (i + 1) * g] = 0
            if zerodiagonal:
                linear[i : i + 1, i * g : (i + 1) * g] = 0
    else:
        g = n_in // n_out
        for i in range(n_out):
            linear[(i + 1) * g :, i : i + 1] = 0
            if zerodiagonal:
                linear[i * g : (i + 1) * g :, i : i + 1] = 0
    l = m = (k - 1) // 2
    mask = np.ones([k, k, n_in, n_out], dtype=np.float32)
    mask[:l, :, :, :] = 0
    mask[l, :m, :, :] = 0
    mask[l, m, :, :] = linear
    return mask.transpose(3, 2, 0, 1)


@pytest.mark.parametrize("n_z, hidden", [(4, 8), (4, 4), (8, 4), (2, 6), (32, 160)])
@pytest.mark.parametrize("depth", [0, 1, 2, 3])
def test_pixel_masks_are_openai_iafs_get_conv_ar_mask_entry_for_entry(n_z, hidden, depth):
    # ar_multiconv2d: hidden layers ar_conv2d(zerodiagonal=False), each output its own
    # ar_conv2d(zerodiagonal=True) of n_z maps (ours: the outputs' maps stacked in one conv)
    outputs = 2
    net = ARConvNet(n_z, hidden, depth, outputs, mask="pixel")
    width, pairs = n_z, []
    for i, layer in enumerate(net.hidden):
        pairs.append((f"hidden {i}", layer.mask, reference_conv_ar_mask(width, hidden, False)))
        width = hidden
    for i, chunk in enumerate(net.out.mask.chunk(outputs, dim=0)):
        pairs.append((f"output {i}", chunk, reference_conv_ar_mask(width, n_z, True)))
    for name, ours, reference in pairs:
        assert ours.shape == reference.shape, name
        differ = int((ours.numpy() != reference).sum())
        assert differ == 0, f"{name}: {differ} mask entries differ from openai/iaf's"


@pytest.mark.parametrize("n_z, hidden", [(2, 4), (3, 4), (4, 3)])
@pytest.mark.parametrize("depth", [0, 1, 2, 3])
def test_pixel_masks_are_autoregressive_over_reverse_raster_pixels_then_channels(n_z, hidden, depth):
    torch.manual_seed(depth)
    size = 4
    net = ARConvNet(n_z, hidden, depth, outputs=2, mask="pixel").double()
    for p in net.parameters():
        p.data.normal_()
    context = torch.randn(1, hidden, size, size, dtype=torch.float64) if depth else None
    z = torch.randn(1, n_z, size, size, dtype=torch.float64)
    order = autoregressive_order(n_z, size, "pixel")
    for out in range(2):
        jac = torch.autograd.functional.jacobian(lambda z, out=out: net(z, context)[out], z)
        jac = jac.reshape(n_z * size * size, n_z * size * size)[order][:, order]
        assert torch.all(jac.triu() == 0), "an output sees its own or a later position"
        jac = jac.reshape(size * size, n_z, size * size, n_z)  # (pixel, c) in AR order
        # channel 0 at pixel (1, 1) sees every channel of the pixels after it: (1, 2) and (2, 1)
        p = size * size - 1 - (size + 1)
        assert jac[p, 0, p - 1].abs().sum() > 0 and jac[p, 0, p - size].abs().sum() > 0


def test_weights_saved_with_another_pixel_mask_are_refused_in_one_line(tmp_path):
    key = "blocks.0.flow.hidden.1.mask"
    spec = {**TINY, "depths": [1], "posterior": "down-iaf", "depth_ar": 2, "ar_mask": "pixel"}
    cfg = Config(model=ModelConfig(**spec))
    model = build_model(cfg.model, (1, 8, 8), True)
    ckpt = dict(config=cfg.to_dict(), image_shape=[1, 8, 8], binary=True, model=model.state_dict())
    run, path = tmp_path / "run", tmp_path / "run" / "best.pt"
    run.mkdir()
    save_atomic(ckpt, path)
    assert torch.equal(load_run(run).model.state_dict()[key], ckpt["model"][key])
    # the hidden-to-hidden mask pixel runs had before: by degree, as the channel masks
    degrees = torch.arange(cfg.model.n_h) * cfg.model.n_z // cfg.model.n_h
    old = channel_mask(degrees, degrees, False, pixels=True)
    assert not torch.equal(old, ckpt["model"][key])
    save_atomic({**ckpt, "model": {**ckpt["model"], key: old}}, path)
    with pytest.raises(CheckpointError, match=rf"best.pt: {key}: .* another autoregressive mask"):
        load_run(run)


@pytest.mark.parametrize("posterior", ["up-iaf", "down-iaf", "down-iaf-mean"])
@pytest.mark.parametrize("depth_ar", [0, 1, 2, 3])
@pytest.mark.parametrize("ar_mask", ["channel", "pixel"])
def test_iaf_step_is_triangular_and_its_log_det_is_exact(posterior, depth_ar, ar_mask):
    torch.manual_seed(0)
    cfg = ModelConfig(**{**TINY, "n_z": 3, "depth_ar": depth_ar, "posterior": posterior, "ar_mask": ar_mask})
    block = HierarchicalBlock(hierarchical_spec(cfg), downsample=False).double()
    for p in block.parameters():
        p.data.normal_(std=0.5)
    mean = torch.randn(1, 3, 2, 2, dtype=torch.float64)
    log_std = 0.3 * torch.randn(1, 3, 2, 2, dtype=torch.float64)
    ctx = torch.randn(1, block.up_split[2], 2, 2, dtype=torch.float64)
    eps = torch.randn(1, 3, 2, 2, dtype=torch.float64)

    def sample(e):
        return block._posterior_sample(e, mean, log_std, ctx)[0]

    order = autoregressive_order(3, 2, ar_mask)
    jac = torch.autograd.functional.jacobian(sample, eps).reshape(12, 12)[order][:, order]
    assert torch.all(jac.triu(1) == 0)
    _, ladj = block._posterior_sample(eps, mean, log_std, ctx)
    assert torch.allclose(torch.linalg.slogdet(jac)[1], ladj.sum(), atol=1e-10)


@pytest.mark.parametrize("ar_mask", ["channel", "pixel"])
def test_iaf_prior_samples_invert_its_density(ar_mask):
    torch.manual_seed(0)
    model = tiny(prior="iaf", depth_ar=2, n_z=3, ar_mask=ar_mask)
    for p in model.parameters():
        p.data.normal_(std=0.3)
    torch.manual_seed(1)
    z_top = model.split_latent(model.sample_prior((5,)))[0]
    torch.manual_seed(1)
    eps_top = model.split_latent(torch.randn(5, model.latent_dim, dtype=torch.float64))[0]
    block = model.blocks[-1]  # the top block, sampled first
    top = model.h_top.view(1, -1, 1, 1).expand(5, -1, *model.top_size)
    p_mean, p_log_std, p_ctx, *_ = block.down_conv1(F.elu(top)).split(block.down_split, dim=1)
    mean, log_std = block._prior_params(z_top, p_mean, p_log_std, p_ctx)
    assert torch.allclose((z_top - mean) * torch.exp(-log_std), eps_top, atol=1e-10)


# ----------------------------------------------------------------------------- free bits


def test_free_bits_gradient_is_zero_below_kl_min_and_the_true_kl_gradient_above():
    torch.manual_seed(0)
    model = tiny(depths=[2, 1])
    x = images(6)
    model.data_init(x)
    terms = model(x, samples=2)
    mean_kl = terms.kl_groups.detach().flatten(0, 1).mean(0)  # (G,)
    ordered = mean_kl.sort().values
    kl_min = (ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2]).item() / 2
    below, above = mean_kl < kl_min, mean_kl > kl_min
    assert below.any() and above.any()

    kl = terms.kl_groups.detach().requires_grad_(True)
    loss = training_loss(ElboTerms(terms.log_likelihood, terms.log_prior, terms.log_q, kl), 1.0, kl_min, 0)
    (grad,) = torch.autograd.grad(loss, kl)
    assert torch.all(grad[..., below] == 0)
    assert torch.allclose(grad[..., above], torch.full_like(grad[..., above], 1 / 12))

    params = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad(training_loss(terms, 1.0, kl_min, 0), params, retain_graph=True)
    true = -terms.log_likelihood.mean() + terms.kl_groups.flatten(0, 1).mean(0)[above].sum()
    want = torch.autograd.grad(true, params, retain_graph=True, allow_unused=True)
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, torch.zeros_like(g) if w is None else w, atol=1e-10)
    # without free bits the loss is exactly the negative ELBO
    assert torch.allclose(training_loss(terms, 1.0, 0.0, 0), -terms.log_weight.mean(), atol=1e-9)


def test_reported_elbo_never_uses_kl_min():
    model = tiny(dtype=torch.float32)
    x = images(6, dtype=torch.float32)
    model.data_init(x)
    torch.manual_seed(1)
    expected = model(x).log_weight.mean().item()
    cfg = Config()
    cfg.train.kl_min = 5.0
    cfg.train.amp = "none"  # compared with the float32 forward pass above
    optimizer = torch.optim.Adamax(model.parameters(), lr=1e-3)
    torch.manual_seed(1)
    out = train_step(model, optimizer, x, cfg, beta=1.0, lr=1e-3)
    assert out["elbo"] == pytest.approx(expected, rel=1e-6)
    assert out["loss"] > -expected  # the free-bits objective is looser than the ELBO


# ----------------------------------------------------------------------------- the interface


# every posterior, and the up-* ones with their sample fed back into the bottom-up stream
VARIANTS = [(p, False) for p in BLOCK_POSTERIORS]
VARIANTS += [(p, True) for p in BLOCK_POSTERIORS if p.startswith("up")]


@pytest.mark.parametrize("posterior,feedback", VARIANTS)
@pytest.mark.parametrize("prior", ["diag", "iaf"])
def test_forward_matches_encode_transform_and_log_joint(posterior, feedback, prior):
    torch.manual_seed(0)
    model = tiny(depths=[1, 2], posterior=posterior, prior=prior, up_feedback=feedback)
    x = images(3)
    model.data_init(x)
    eps = torch.randn(2, 3, model.latent_dim, dtype=torch.float64)
    terms = model(x, eps=eps)
    posterior_ = model.encode(x)
    z, ladj = posterior_.transform(eps)
    log_q = posterior_.base_log_prob(eps) - ladj
    assert torch.allclose(terms.log_q, log_q, atol=1e-5)
    assert torch.allclose(terms.log_prior, model.log_prior(z), atol=1e-5)
    assert torch.allclose(terms.log_likelihood, model.log_likelihood(x, z), atol=1e-5)
    assert torch.allclose(terms.log_weight, model.log_joint(x, z) - log_q, atol=1e-5)
    assert torch.allclose(terms.kl_groups.sum(-1), terms.kl, atol=1e-8)


@pytest.mark.parametrize("posterior,feedback", VARIANTS)
def test_every_parameter_gets_a_gradient(posterior, feedback):
    """DistributedDataParallel requires it (no parameter may be left out of the loss)."""
    model = tiny(depths=[2, 1], posterior=posterior, prior="iaf", dtype=torch.float32, up_feedback=feedback)
    x = images(3, dtype=torch.float32)
    model.data_init(x)
    (-model(x).log_weight.mean()).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("posterior,feedback", VARIANTS)
@pytest.mark.parametrize("ar_mask", ["channel", "pixel"])
def test_log_q_is_exact_over_all_blocks(posterior, feedback, ar_mask):
    """log q(z|x) = log N(eps) - ladj needs the whole map eps -> z (every block) to have
    log|det dz/deps| = sum of the blocks' elementwise ladj."""
    torch.manual_seed(0)
    options = dict(posterior=posterior, up_feedback=feedback, ar_mask=ar_mask)
    model = tiny(shape=(1, 4, 4), depths=[1, 1], n_z=2, **options)
    for p in model.parameters():
        p.data.normal_(std=0.3)
    posterior_ = model.encode(images(1, shape=(1, 4, 4)))
    eps = torch.randn(1, model.latent_dim, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda e: posterior_.transform(e)[0], eps)
    jac = jac.reshape(model.latent_dim, model.latent_dim)
    assert torch.allclose(torch.linalg.slogdet(jac)[1], posterior_.transform(eps)[1].sum(), atol=1e-9)


def test_up_feedback_feeds_lower_samples_into_higher_blocks():
    torch.manual_seed(0)
    x = images(1)
    eps = torch.randn(2, 1, 40, dtype=torch.float64)
    top = 8  # the top block's z (2 x 2 x 2) comes first in the flat latent; the bottom block's last
    eps[1, :, :top] = eps[0, :, :top]  # same noise for the top block, other noise below it
    for feedback in (False, True):
        model = tiny(posterior="up-iaf", up_feedback=feedback)
        model.data_init(x)
        z, _ = model.encode(x).transform(eps)
        assert model.latent_dim == 40 and torch.equal(z[0, :, :top], z[1, :, :top]) != feedback


def test_evaluation_in_chunks_of_rows_matches_one_pass():
    torch.manual_seed(0)
    model = tiny(prior="iaf")
    x = images(3)
    eps = torch.randn(4, 3, model.latent_dim, dtype=torch.float64)
    z, ladj = model.encode(x).transform(eps)
    joint = model.log_joint(x, z)
    model.max_rows = 5  # 12 rows in chunks of 5, 5, 2
    z2, ladj2 = model.encode(x).transform(eps)
    assert torch.allclose(z, z2) and torch.allclose(ladj, ladj2)
    assert torch.allclose(joint, model.log_joint(x, z))


class LargestTensor(TorchDispatchMode):
    """Records the most elements any tensor produced by an op has while the mode is active."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def largest_tensor(fn) -> int:
    with LargestTensor() as mode:
        fn()
    return mode.numel


@torch.no_grad()
def test_evaluation_memory_does_not_grow_with_k_or_the_batch():
    torch.manual_seed(0)
    shape = (3, 16, 16)  # per-row activations dwarf the (K, B, groups) outputs
    model = tiny(shape=shape, binary=False)
    model.max_rows = 6
    x = images(12, shape=shape, binary=False)
    sizes = {
        (k, b): largest_tensor(lambda k=k, b=b: iwae(model, x[:b], samples=k, chunk=k))
        for k in (2, 20)
        for b in (6, 12)  # from max_rows images on, the batch no longer matters either
    }
    assert len(set(sizes.values())) == 1, sizes
    one_row = largest_tensor(lambda: model(x[:1], samples=1))
    assert sizes[(20, 12)] <= model.max_rows * one_row
    model.max_rows = 10**6  # unbounded (the old behaviour): the largest tensor grows with K
    assert largest_tensor(lambda: iwae(model, x, samples=20, chunk=20)) > sizes[(20, 12)]


@torch.no_grad()
def test_chunked_evaluation_forward_matches_one_pass():
    torch.manual_seed(0)
    model = tiny(shape=(3, 8, 8), binary=False, prior="iaf", ar_mask="pixel")
    x = images(5, shape=(3, 8, 8), binary=False)
    eps = torch.randn(3, 5, model.latent_dim, dtype=torch.float64)
    model.max_rows = 10**6
    whole = model(x, eps=eps)
    model.max_rows = 4  # images in chunks of 4, 1; rows in chunks of 4
    parts = model(x, eps=eps)
    for name in ("log_likelihood", "log_prior", "log_q", "kl_groups"):
        a, b = getattr(whole, name), getattr(parts, name)
        assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-12, atol=1e-9), name


def test_row_budget_sets_the_rows_per_pass():
    small = ModelConfig(**{**TINY, "posterior": "down-iaf", "row_budget_mb": 1})
    large = ModelConfig(**{**TINY, "posterior": "down-iaf", "row_budget_mb": 64})
    rows = [HierarchicalVAE(hierarchical_spec(c), (3, 32, 32), binary=False).max_rows for c in (small, large)]
    model = HierarchicalVAE(hierarchical_spec(small), (3, 32, 32), binary=False)
    assert rows[0] == 2**20 // model.bytes_per_row() and rows[1] == 64 * 2**20 // model.bytes_per_row()


IMAGE_KINDS = [((1, 28, 28), True), ((3, 16, 16), False)]


@pytest.mark.parametrize("depths", [[1], [2, 1], [1, 1, 1]])
@pytest.mark.parametrize("shape,binary", IMAGE_KINDS)
def test_shapes_for_every_posterior(depths, shape, binary):
    torch.manual_seed(0)
    c, height, width = shape
    x = images(2, shape, binary, dtype=torch.float32)
    for posterior in BLOCK_POSTERIORS:
        model = tiny(shape, binary, torch.float32, depths=depths, posterior=posterior, n_h=4)
        factor = 2 ** len(depths)
        padded = math.ceil(height / factor) * factor  # 28 -> 32 with three levels
        resolutions = [padded // 2 ** (i + 1) for i, d in enumerate(depths) for _ in range(d)]
        assert model.latent_dim == sum(2 * r * r for r in resolutions)
        terms = model(x, samples=3)
        for t in (terms.log_likelihood, terms.log_prior, terms.log_q):
            assert t.shape == (3, 2) and torch.isfinite(t).all()
        assert terms.kl_groups.shape == (3, 2, 2 * sum(depths))
        z, log_q = model.encode(x).rsample_and_log_prob((5,))
        assert z.shape == (5, 2, model.latent_dim) and log_q.shape == (5, 2)
        assert model.log_joint(x, z).shape == (5, 2)
        prior_z = model.sample_prior((4,), temperature=0.7)
        assert prior_z.shape == (4, model.latent_dim)
        assert model.decode_mean(prior_z).shape == (4, c, height, width)
        assert model.decode_sample(z).shape == (5, 2, c, height, width)


def test_unknown_posterior_or_prior_fails_listing_the_valid_names():
    with pytest.raises(ValueError, match="up-diag, up-iaf, down-diag, down-iaf, down-iaf-mean"):
        tiny(posterior="iaf")
    with pytest.raises(ValueError, match="diag, iaf"):
        tiny(prior="made")


def test_data_init_normalises_the_first_batch():
    torch.manual_seed(0)
    model = tiny(n_h=8)
    x = images(16)
    model.data_init(x)
    h = model.x_enc(F.pad(2 * x - 1, model.pad))
    assert torch.allclose(h.mean((0, 2, 3)), torch.zeros(8, dtype=h.dtype), atol=1e-8)
    # x_enc starts at std 0.1, as openai/iaf's conv2d default init_scale
    assert torch.allclose(h.std((0, 2, 3), unbiased=False), torch.full((8,), 0.1, dtype=h.dtype), atol=1e-7)
    q = model.blocks[0].up_conv1(F.elu(h))
    assert torch.allclose(q.std((0, 2, 3), unbiased=False), torch.full((q.shape[1],), 0.1, dtype=h.dtype))


def test_bits_per_dim_of_8bit_data_is_nats_over_d_ln2():
    torch.manual_seed(0)
    shape = (3, 8, 8)
    model = tiny(shape, binary=False, dtype=torch.float32)
    x = images(6, shape, binary=False, dtype=torch.float32)
    model.data_init(x)
    est = evaluate(model, x.split(3), "elbo", dims=math.prod(shape))
    assert est.bits_per_dim == pytest.approx(est.nll / (192 * math.log(2)))
    assert 8 < est.bits_per_dim < 10  # untrained: a logistic of scale 1 on [-1, 1], near uniform


# ----------------------------------------------------------------------------- learning


def test_tiny_model_overfits_a_few_images():
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    model = tiny(dtype=torch.float32, n_h=16, n_z=4)
    x = torch.tensor(load_digits().images[:8] / 16.0 > 0.5, dtype=torch.float32)[:, None]
    model.data_init(x)
    optimizer = torch.optim.Adamax(model.parameters(), lr=5e-3)
    curve = []
    for _ in range(100):
        terms = model(x)
        loss = training_loss(terms, 1.0, 0.0, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
        curve.append(terms.log_weight.mean().item())
    means = [sum(curve[i : i + 20]) / 20 for i in range(0, 100, 20)]
    assert all(b > a for a, b in zip(means, means[1:], strict=False)), means
    assert means[-1] > means[0] + 10, means  # about -43 -> -25 nats


def test_iwae_bounds_elbo_and_ais_runs_through_the_same_interface():
    torch.manual_seed(0)
    model = tiny(dtype=torch.float32, prior="iaf").eval()
    x = images(4, dtype=torch.float32)
    model.data_init(x)
    with torch.no_grad():
        assert iwae(model, x, samples=64, chunk=16).mean() > elbo(model, x, samples=64).mean()
    for init in ("prior", "posterior"):
        log_p = ESTIMATORS["ais"](model, x, samples=2, steps=3, leapfrog=2, init=init)
        assert log_p.shape == (4,) and torch.isfinite(log_p).all()


def test_cli_trains_evaluates_and_samples_a_hierarchical_model(tmp_path):
    run = tmp_path / "run"
    overrides = [
        "model.type=hierarchical", "model.depths=[1,1]", "model.n_h=8", "model.n_z=2",
        "model.posterior=down-iaf", "train.epochs=1", "train.optimizer=adamax", "train.lr=0.002",
        "train.kl_min=0.1", "train.ema=0.99",
    ]  # fmt: skip
    out = run_cli("train", "--run-dir", str(run), "--no-progress", *overrides).stdout
    assert "best valid ELBO" in out
    result = json.loads(run_cli("eval", str(run), "--estimator", "iwae", "--samples", "10", "--json").stdout)
    assert result["n"] == 250 and 0 < result["nll"] < 64  # 64 ln 2 = 44.4 nats: pixels at p = 0.5
    assert result["likelihood"] == "bernoulli"  # every reported number names its likelihood
    text = run_cli("eval", str(run), "--estimator", "elbo", "--limit", "10").stdout
    assert "bernoulli likelihood" in text
    run_cli("sample", str(run), "--n", "4", "--temperature", "0.5", "--out", str(tmp_path / "s.png"))
    assert (tmp_path / "s.png").is_file()


@pytest.mark.parametrize("name", ["iaf-cifar10-311", "iaf-cifar10"])
def test_the_cifar10_presets_are_openai_iafs_models_parameter_for_parameter(name):
    from flowvae.presets import preset

    cfg = preset(name)
    assert cfg.model.ar_mask == "pixel" and cfg.model.likelihood == "iaf-logistic"
    assert (cfg.data.valid_size == 0) == (name == "iaf-cifar10-311")  # tf_train.py: all 50k images
    model = build_model(cfg.model, (3, 32, 32), binary=False)
    # tf_train.py with h_size 160, z_size 32, depth 1, num_blocks 20 (models.py's depths=[10,10]
    # has as many parameters: strided and transposed convs are as big): weight-normalised convs
    # (V, g, b), AR nets [h, h] -> [z, z], h_top, x_dec to 3 means and one dec_log_stdv; the top
    # block's up_conv3 and the h_det maps of its up_conv1 feed nothing and are not counted
    h, z, blocks = cfg.model.n_h, cfg.model.n_z, sum(cfg.model.depths)

    def wn(k, n_in, n_out):
        return k * k * n_in * n_out + 2 * n_out

    block = (
        wn(3, h, 2 * z + 2 * h) + wn(3, h, h) + wn(3, h, 4 * z + 2 * h)
        + wn(3, z, h) + wn(3, h, h) + 2 * wn(3, h, z) + wn(3, z + h, h)
    )  # fmt: skip
    live = wn(5, 3, h) + blocks * block + h + wn(5, h, 3) + 1 - wn(3, h, h) - (9 * h * h + 2 * h)
    assert sum(p.numel() for p in model.parameters()) == live
