import pytest

from flowvae.config import (
    PRESETS,
    Config,
    ConfigError,
    apply_overrides,
    load_yaml,
    parse_override,
    preset,
    save_yaml,
    valid_keys,
)


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


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        apply_overrides(Config(), ["train.lrr=1"])
    assert "train.lr," in str(e.value) and "\n" not in str(e.value)
    assert "train.lr" in valid_keys()


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
