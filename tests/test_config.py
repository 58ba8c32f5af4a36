"""The configuration: validated at construction, flat round trip, unknown keys and wrong types refused."""

from __future__ import annotations

import pytest

from dualprompt.config import Config, ConfigError, MethodConfig, parse_value


def test_flat_round_trip():
    cfg = Config().replace(n_ctx=8, mi_weight=2.5, method="kgcoop", dataset="eurosat", seed=3)
    flat = cfg.to_flat()
    assert flat["n_ctx"] == 8 and flat["method"] == "kgcoop" and flat["seed"] == 3
    assert Config.from_flat(flat) == cfg


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"mi_weight": -1.0}, "mi_weight"),
        ({"aug_weight": -0.1}, "aug_weight"),
        ({"mi_temperature": 0.0}, "mi_temperature"),
        ({"method": "cocoop"}, "method"),
        ({"n_ctx": 0}, "n_ctx"),
        ({"shots": 0}, "shots"),
        ({"warmup_epochs": 5, "epochs": 5}, "warmup_epochs"),
        ({"aug_variant": "cutmix"}, "aug_variant"),
        ({"ctx_fill": "zeros"}, "ctx_fill"),
    ],
)
def test_bad_values_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=f"^{field}: "):
        Config().replace(**overrides)


def test_unknown_key_is_refused_with_suggestion():
    with pytest.raises(ConfigError, match="mi_wieght: not a configuration field. Did you mean mi_weight"):
        Config.from_flat({"mi_wieght": 1.0})


def test_wrong_type_is_refused():
    with pytest.raises(ConfigError, match="n_ctx: expected int, got 'four'"):
        Config().replace(n_ctx="four")
    assert Config().replace(mi_weight=2).method.mi_weight == 2.0  # ints are fine where floats are expected


def test_parse_value_from_command_line_strings():
    assert parse_value("n_ctx", "16") == 16
    assert parse_value("use_feature_cache", "false") is False
    with pytest.raises(ConfigError, match="mi_weight: 'lots' is not a valid float"):
        parse_value("mi_weight", "lots")


def test_sections_validate_on_their_own():
    with pytest.raises(ConfigError, match="kg_weight"):
        MethodConfig(kg_weight=-8)
