"""The after-training commands end to end (encode, interpolate, traverse, layers, reconstruct) on
the digits default and on a tiny hierarchical run; their refused inputs are in test_bad_inputs.py."""

import json

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image

import flowvae
from flowvae.checkpoint import load_run
from flowvae.data import evaluation_images, load_data

RUNS = {
    "digits": ["model.hidden=[16]", "model.latent_dim=4", "train.epochs=1", "eval.samples=2"],
    "hierarchical": [
        "model.type=hierarchical", "model.depths=[1,1]", "model.n_h=6", "model.n_z=2",
        "model.posterior=down-iaf", "train.epochs=1", "train.optimizer=adamax", "train.lr=0.002",
        "eval.samples=2",
    ],
}  # fmt: skip


@pytest.fixture(scope="module", params=list(RUNS))
def trained(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param) / "run"
    run_cli("train", "--run-dir", str(d), "--no-progress", *RUNS[request.param])
    return d


def _png(path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def test_encode_writes_the_latents_of_a_subset_and_their_indices(trained, tmp_path):
    out = tmp_path / "z.npz"
    text = run_cli("encode", str(trained), "--limit", "6", "--out", str(out)).stdout
    assert "posterior means" in text and str(out) in text
    run = load_run(trained)
    with np.load(out, allow_pickle=False) as saved:
        assert set(saved.files) == {"z", "index", "layer_sizes"}
        d = run.model.latent_dim
        assert saved["z"].shape == (6, d) and saved["layer_sizes"].sum() == d
        examples = evaluation_images(load_data(run.config.data), "test", 6, 0)
        assert np.array_equal(saved["index"], examples.indices.numpy())
        expected = flowvae.encode(run.model, examples.images).z.numpy()
        assert np.allclose(saved["z"], expected, atol=1e-6)
    sampled = json.loads(run_cli("encode", str(trained), "--limit", "3", "--samples", "2", "--out",
                                 str(tmp_path / "s.npz"), "--json").stdout)  # fmt: skip
    assert sampled == {"file": str(tmp_path / "s.npz"), "n": 3, "latent_dim": run.model.latent_dim}
    with np.load(tmp_path / "s.npz", allow_pickle=False) as saved:
        assert saved["z"].shape == (2, 3, run.model.latent_dim) and saved["log_q"].shape == (2, 3)


@pytest.mark.parametrize("space", ["latent", "base"])
def test_interpolate_writes_a_row_per_pair(trained, tmp_path, space):
    out = tmp_path / "i.png"
    result = run_cli("interpolate", str(trained), "--pairs", "3", "--steps", "4", "--space", space,
                     "--path", "slerp", "--out", str(out), "--json").stdout  # fmt: skip
    assert json.loads(result) == {"file": str(out)}
    width, height = _png(out)  # 3 rows of x0, 4 steps, x1; 8x8 digits drawn at 64 px plus padding 2
    assert (width, height) == (6 * 66 + 2, 3 * 66 + 2)


def test_traverse_layers_and_default_outputs_land_in_the_run_without_overwriting(trained):
    first = run_cli("traverse", str(trained), "--dims", "0-1", "--steps", "5").stdout
    second = run_cli("traverse", str(trained), "--dims", "1", "--index", "3").stdout
    assert "traverse-1.png" in first and "traverse-2.png" in second
    assert _png(trained / "traverse-1.png") == (5 * 66 + 2, 2 * 66 + 2)
    layers = run_cli("layers", str(trained), "--n", "4", "--temperature", "0.5", "--json").stdout
    path = json.loads(layers)["file"]
    model = load_run(trained).model
    rows = 1 + len(model.latent_shapes) + 1  # the images, then keep 0 .. L layers
    assert path.endswith("layers-1.png") and _png(path) == (4 * 66 + 2, rows * 66 + 2)


def test_reconstruct_the_users_own_images(trained, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    digits = (load_data(load_run(trained).config.data).test[:3, 0].numpy() * 255).astype(np.uint8)
    for i, image in enumerate(digits):
        Image.fromarray(image).save(folder / f"{i}.png")
    out = tmp_path / "r.png"
    text = run_cli("reconstruct", str(trained), "--images", str(folder), "--out", str(out)).stdout
    assert "reconstructions of 3 images" in text and _png(out) == (6 * 66 + 2, 66 + 2)
    np.savez(tmp_path / "mine.npz", digits)
    run_cli("reconstruct", str(trained), "--images", str(tmp_path / "mine.npz"), "--out", str(out))
    grid = np.asarray(Image.open(out))
    model = load_run(trained).model
    rec = flowvae.reconstruct(model, torch.from_numpy(digits[:, None] / 255).float())
    x_hat = grid[2 : 2 + 64 : 8, 2 + 66 : 2 + 66 + 64 : 8]  # the grid's second image: x̂ of digit 0
    assert np.abs(x_hat.astype(int) - np.round(rec[0, 0].numpy() * 255)).max() <= 1
