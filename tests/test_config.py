import pytest

from flowvae.config import (
    Config,
    ConfigError,
    apply_overrides,
    load_yaml,
    parse_override,
    save_yaml,
    valid_keys,
    validate,
)
from flowvae.presets import PRESETS, preset, starting_preset


def test_overrides_are_typed():
    overrides = ["model.hidden=[500,500]", "train.lr=3e-4", "train.kl_min=1", "model.batch_norm=true"]
    cfg = apply_overrides(Config(), overrides)
    assert cfg.model.hidden == [500, 500]
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.kl_min, float)
    assert cfg.model.batch_norm is True


@pytest.mark.parametrize(
    "override, words",
    [
        ("model.latent_dim=abc", "expected an integer"),
        ("model.latent_dim=1.5", "expected an integer"),
        ("model.batch_norm=3", "true/false"),
        ("model.hidden=[a]", "expected an integer"),
        ("model.nope=1", "unknown config key"),
        ("nope=1", "unknown config key"),
        ("noequals", "key=value"),
    ],
)
def test_bad_overrides_fail_clearly(override, words):
    with pytest.raises(ConfigError, match=words):
        apply_overrides(Config(), [override])


@pytest.mark.parametrize(
    "override, near",
    [
        ("model.posterier=iaf", ["model.posterior"]), ("posterior=iaf", ["model.posterior"]),
        ("train.posterior=iaf", ["model.posterior"]), ("train.lrr=1", ["train.lr"]),
        ("data.rot=x", ["data.root"]), ("batch_size=5", ["train.batch_size", "eval.batch_size"]),
        ("model.nope=1", []),
    ],
)  # fmt: skip
def test_unknown_key_names_the_nearest_valid_keys(override, near):
    """Not a list of every key: the nearest ones (a misspelling, a missing or wrong section)."""
    with pytest.raises(ConfigError) as e:
        apply_overrides(Config(), [override])
    message = str(e.value)
    assert "\n" not in message and "flowvae config" in message and all(k in valid_keys() for k in near)
    suggested = message.partition("did you mean ")[2].partition("?")[0]
    assert (suggested.split(" or ") if suggested else []) == near


def test_yaml_roundtrip_and_errors(tmp_path):
    cfg = apply_overrides(preset("mnist-mlp"), ["train.epochs=3"])
    save_yaml(cfg, tmp_path / "c.yaml")
    assert load_yaml(tmp_path / "c.yaml") == cfg
    (tmp_path / "bad.yaml").write_text("model:\n  latent_dimm: 3\n")
    with pytest.raises(ConfigError, match="latent_dimm"):
        load_yaml(tmp_path / "bad.yaml")
    (tmp_path / "broken.yaml").write_text("model: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(tmp_path / "broken.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")


def test_every_preset_resolves_and_parents_exist():
    preset("digits")
    assert len(PRESETS) >= 2
    for name, p in PRESETS.items():
        assert p.description
        assert p.parent is None or p.parent in PRESETS
        assert isinstance(preset(name), Config)
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("nope")


def test_parse_override_keeps_strings():
    assert parse_override("model.posterior=iaf") == ("model.posterior", "iaf")
    assert parse_override("data.root=") == ("data.root", "")


def test_every_preset_passes_validation():
    for name in PRESETS:
        assert validate(preset(name)) is not None


def test_string_choices_are_the_registries():
    """The Literal choices in config.py list exactly what the builders accept."""
    import typing

    from flowvae import hierarchical, nets, posteriors, priors
    from flowvae.config import (
        DataConfig,
        DecoderNetwork,
        FlatPosterior,
        FlatPrior,
        HierarchicalPosterior,
        HierarchicalPrior,
        ModelConfig,
        Network,
    )
    from flowvae.data import BINARIZE_MODES, DATASETS

    hints = typing.get_type_hints(ModelConfig)
    assert set(typing.get_args(FlatPosterior)) == set(posteriors.POSTERIORS)
    assert set(typing.get_args(HierarchicalPosterior)) == set(hierarchical.BLOCK_POSTERIORS)
    assert set(typing.get_args(Network)) == set(nets.ENCODERS)
    decoders = set(typing.get_args(DecoderNetwork))
    assert decoders == set(typing.get_args(Network)) | {"made"} == set(nets.DECODERS)
    assert set(typing.get_args(HierarchicalPrior)) == set(hierarchical.BLOCK_PRIORS)
    assert set(typing.get_args(FlatPrior)) == set(priors.PRIORS)
    every_prior = {"auto"} | set(priors.PRIORS) | set(hierarchical.BLOCK_PRIORS)
    assert set(typing.get_args(hints["prior"])) == every_prior
    data = typing.get_type_hints(DataConfig)
    assert set(typing.get_args(data["name"])) == set(DATASETS)
    assert set(typing.get_args(data["binarize"])) == set(BINARIZE_MODES)


def test_ranges_hold_for_yaml_files_too(tmp_path):
    (tmp_path / "c.yaml").write_text("model:\n  latent_dim: 0\n")
    with pytest.raises(ConfigError, match="model.latent_dim=0: must be > 0"):
        load_yaml(tmp_path / "c.yaml")


@pytest.mark.parametrize(
    "overrides, config, expected",
    [
        ([], None, "digits"),
        (["data.name=binarized_mnist"], None, "mnist-mlp"),
        (["data.name=mnist", "train.epochs=3"], None, "mnist-dynamic-mlp"),
        (["data.name=mnist", "data.name=fashion_mnist"], None, "fashion-mnist-mlp"),
        ([], "data:\n  name: cifar10\n", "iaf-cifar10"),
        (["data.name=npz"], None, "digits"),
    ],
)
def test_a_run_without_a_preset_starts_from_its_datasets_preset(tmp_path, overrides, config, expected):
    path = None
    if config:
        path = tmp_path / "c.yaml"
        path.write_text(config)
    name, note = starting_preset(overrides, str(path) if path else None)
    assert name == expected and f"preset {expected}" in note and "\n" not in note
    if expected != "digits":
        assert preset(name).data.name in " ".join(overrides) + (config or "")


def test_the_mnist_default_is_not_the_digits_sizes():
    """Measured 0.8 nat worse at batch 50 (issue 12): MNIST starts from mnist-mlp's sizes."""
    cfg, digits = preset(starting_preset(["data.name=binarized_mnist"])[0]), preset("digits")
    assert (cfg.model.latent_dim, cfg.model.hidden, cfg.train.batch_size) != (
        digits.model.latent_dim, digits.model.hidden, digits.train.batch_size,
    )  # fmt: skip
    assert cfg.train.batch_size == 100 and cfg.model.hidden == [300, 300]


@pytest.mark.parametrize("text", ["model:\n  hidden: 300\n", "model:\n  depths: 2\n  type: hierarchical\n"])
def test_yaml_scalar_where_a_list_is_expected_is_refused(tmp_path, text):
    """`hidden: 300` is not one layer of 300 (it was read as [300]): the file and the key are named."""
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"c\.yaml: model\.(hidden|depths): expected a list"):
        load_yaml(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="expected a list"):
        apply_overrides(Config(), ["model.hidden=300"])


def test_yaml_syntax_error_names_the_line(tmp_path):
    (tmp_path / "broken.yaml").write_text("model:\n  latent_dim: 3\n  hidden: [300, 300\ntrain:\n  lr: 1\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml is not valid YAML at line \d+, column \d+") as e:
        load_yaml(tmp_path / "broken.yaml")
    assert "\n" not in str(e.value)


def test_mistyped_preset_gets_did_you_mean():
    with pytest.raises(ConfigError, match=r"unknown preset 'mnist-mpl'; did you mean mnist-mlp\b") as e:
        preset("mnist-mpl")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="unknown preset 'zzz'; available: "):
        preset("zzz")
