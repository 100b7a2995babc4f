import pytest

from o2f.config import ConfigError, available_configs, load_config, nms_enabled


def test_defaults_are_the_published_recipe():
    cfg = load_config("r50_1x")
    assert cfg.model.assign.topk == 7 and cfg.model.assign.alpha == 0.8
    assert cfg.optim.lr == 0.01 and cfg.optim.steps == [9, 12] and cfg.train.epochs == 12
    assert cfg.test.score_thr == 0.05 and cfg.test.max_per_img == 100 and not nms_enabled(cfg)


def test_base_inheritance_and_overrides():
    cfg = load_config("r101_3x_ms", ["train.epochs=2", "data.train_short=[600, 700]",
                                     "model.backbone.pretrained=false"])
    assert cfg.model.backbone.depth == 101 and cfg.optim.steps == [25, 34]
    assert cfg.train.epochs == 2 and cfg.data.train_short == [600, 700]
    assert {"r50_1x", "r50_3x_ms", "r101_1x", "r101_3x_ms"} <= set(available_configs())


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ConfigError, match="did you mean 'optim.lr'"):
        load_config("r50_1x", ["optim.lrr=0.1"])


def test_wrong_type_and_impossible_values_name_the_key():
    with pytest.raises(ConfigError, match="data.batch_size' must be int"):
        load_config(None, ["data.batch_size=two"])
    with pytest.raises(ConfigError, match="data.batch_size' must be >= 1"):
        load_config(None, ["data.batch_size=0"])
    with pytest.raises(ConfigError, match="optim.lr' must be > 0"):
        load_config(None, ["optim.lr=-0.1"])
    with pytest.raises(ConfigError, match="model.assign.topk' must be >= 1"):
        load_config(None, ["model.assign.topk=0"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(None, ["train.epochs"])


def test_yaml_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(str(bad))
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("base: r50_1x\nmodel:\n  head:\n    feat_channel: 64\n")
    with pytest.raises(ConfigError, match="model.head.feat_channels"):
        load_config(str(unknown))
    with pytest.raises(ConfigError, match="neither a file nor a shipped config"):
        load_config("no_such_config")
