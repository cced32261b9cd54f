"""Presets and configs: the paper's values, strict validation, clear errors naming file and key."""
import pytest

from models.presets import PRESETS, TrainConfig, config_from_dict, load_preset, preset_names, with_overrides

PAPER_PRESETS = {"bp", "fa", "kp", "wm", "sa", "aa", "wm_tpe", "wm_tpe_ad", "wm_tpe_ad_ops", "ia_tpe"}


def test_all_named_presets_ship_and_validate():
    assert PAPER_PRESETS <= set(preset_names())
    assert set(PRESETS) == set(preset_names())
    for name in preset_names():
        config = load_preset(name)
        assert isinstance(config, TrainConfig)
        assert config.name == name


def test_table5_columns_match_the_paper():
    # Table 5: (batch, SGDM lr, alignment optimizer, eta, sigma, delay epochs, alpha/beta, beta, gamma)
    table5 = {
        "wm_tpe": (2048, 1.0, "sgd", 1.0, 0.6905, 2, 15.6607, 0.0283, None),
        "wm_tpe_ad": (256, 0.125, "adam", 0.0053, 0.9500, 0, 13.9040, 2.8109e-8, None),
        "wm_tpe_ad_ops": (256, 0.125, "adam", 0.0025, 0.6402, 0, 0.1344, 232.7856, None),
        "ia_tpe": (256, 0.125, "adam", 0.0098, 0.8176, 1, 129.1123, 7.9990, 3.1610e-6),
    }
    for name, (batch, lr, optimizer, eta, sigma, delay, ratio, beta, gamma) in table5.items():
        config = load_preset(name)
        assert config.alternating is True
        assert (config.batch_size, config.lr, config.delay_epochs) == (batch, lr, delay)
        assert config.lr == pytest.approx(config.batch_size / 2048)  # Appendix B.1.2
        assert config.alignment.optimizer == optimizer and config.alignment.momentum == 0.0
        assert config.alignment.lr == pytest.approx(eta)
        assert config.alignment.input_noise == pytest.approx(sigma)
        assert config.terms["decay"] == pytest.approx(beta)
        assert config.terms["amp"] / config.terms["decay"] == pytest.approx(ratio, rel=1e-6)
        assert config.terms.get("null") == (pytest.approx(gamma) if gamma else None)
        # R's rate is warmed up for 6 epochs only without delay epochs (Appendix B.1.2)
        assert config.alignment.warmup_epochs == (6 if delay == 0 else 0)
        assert (config.epochs, config.warmup_epochs, config.lr_drops) == (100, 6, [30, 60, 80])


def test_table5_layer_ops_rows():
    rows = ["fo_bias", "fo_relu", "fo_bwmc", "fo_fwmc", "fo_fwl2n", "bo_bias", "bo_relu", "bo_fwmc",
            "bo_fwl2n", "bi_bwmc", "bi_fwmc", "bi_fwl2n"]
    T, F = True, False
    table5 = {  # columns of Table 5, rows in the order above
        "wm_tpe": [T, T, T, F, F, F, F, F, F, T, F, F],
        "wm_tpe_ad": [T, T, T, F, F, F, F, F, F, T, F, F],
        "wm_tpe_ad_ops": [T, T, T, T, F, F, T, F, T, T, F, F],
        "ia_tpe": [T, T, T, T, F, T, F, T, T, F, F, F],
    }
    for name, column in table5.items():
        ops = load_preset(name).layer_ops.model_dump()
        assert [ops[row] for row in rows] == column, name


def test_appendix_b2_symmetric_and_activation_alignment():
    for name, terms in {"sa": {"self": 1e-3, "decay": 2e-3}, "aa": {"amp": 1e-3, "sparse": 2e-3}}.items():
        config = load_preset(name)
        assert config.rule == name and config.terms == terms
        assert (config.batch_size, config.lr, config.momentum, config.nesterov) == (256, 0.1, 0.9, True)
        assert (config.warmup_epochs, config.lr_drops, config.epochs) == (5, [30, 60, 80], 90)
        assert (config.alignment.optimizer, config.alignment.lr) == ("adam", 1e-3)
        assert config.alternating is False and config.delay_epochs == 0
        assert config.layer_ops.fo_bias and config.layer_ops.bo_bias
        assert not (config.layer_ops.fo_relu or config.layer_ops.bo_relu)


def test_overrides_for_cpu_runs_and_type_errors():
    config = with_overrides(load_preset("sa"), epochs=2, batch_size=16, width=0.25, small_input=True,
                            image_size=32, seed=None)
    assert (config.epochs, config.batch_size, config.width, config.small_input, config.image_size) == (
        2, 16, 0.25, True, 32)
    assert config.terms == {"self": 1e-3, "decay": 2e-3}
    with pytest.raises(ValueError, match="batch_size"):
        with_overrides(config, batch_size="many")


def test_unknown_preset_lists_valid_names():
    with pytest.raises(KeyError, match="valid presets: .*sa"):
        load_preset("nope")


def test_file_with_base_and_bad_keys_name_the_file_and_key(tmp_path):
    good = tmp_path / "run.toml"
    good.write_text('base = "sa"\nepochs = 3\n[alignment]\nlr = 0.01\n')
    config = load_preset(good)
    assert (config.name, config.epochs, config.alignment.lr, config.alignment.optimizer) == ("sa", 3, 0.01, "adam")

    unknown = tmp_path / "unknown.toml"
    unknown.write_text('rule = "sa"\nlearning_rate = 0.1\n')
    with pytest.raises(ValueError, match=r"unknown\.toml.*'learning_rate'.*unknown key"):
        load_preset(unknown)

    wrong_type = tmp_path / "wrong.toml"
    wrong_type.write_text('[alignment]\noptimizer = "rmsprop"\n')
    with pytest.raises(ValueError, match=r"wrong\.toml.*'alignment\.optimizer'"):
        load_preset(wrong_type)

    with pytest.raises(FileNotFoundError, match="missing.toml"):
        load_preset(tmp_path / "missing.toml")


def test_fields_added_later_stay_out_of_dumps_at_their_default():
    config = load_preset("sa")
    dumped = config.model_dump()
    assert "amp" not in dumped and "batch_fraction" not in dumped["alignment"]
    # a config recorded before those fields existed is today's config, so finished runs are still reused
    assert config_from_dict(dumped) == config and config_from_dict(dumped).model_dump_json() == config.model_dump_json()
    changed = with_overrides(config, amp=True, alignment={"batch_fraction": 0.25})
    again = changed.model_dump(mode="json")
    assert again["amp"] is True and again["alignment"]["batch_fraction"] == 0.25
    assert config_from_dict(again) == changed


def test_one_layer_ops_schema_for_configs_and_the_engine():
    from models.layer_ops import AlignmentOptions, LayerOps

    assert TrainConfig.model_fields["layer_ops"].annotation is LayerOps
    assert issubclass(AlignmentOptions, LayerOps) and len(LayerOps.model_fields) == 12
    assert AlignmentOptions().model_dump(include=set(LayerOps.model_fields)) == LayerOps().model_dump()
    with pytest.raises(ValueError, match=r"run\.toml: .*'layer_ops\.fo_relu'"):
        config_from_dict({"layer_ops": {"fo_relu": "yes"}}, source="run.toml")
    with pytest.raises(ValueError, match=r"'alignment\.batch_fraction'"):
        with_overrides(TrainConfig(), alignment={"batch_fraction": 0})
