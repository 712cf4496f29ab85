"""Configs as code: loading ``file.py:variant``, type-checked overrides, clear errors."""

import os

import pytest

from smoothmax import train
from smoothmax.config import ConfigError, apply_override, base_config, load_config
from tests.test_train import tiny_config

CONFIGS = os.path.join(os.path.dirname(__file__), os.pardir, "configs")


def test_config_errors_name_the_problem(tmp_path):
    c = base_config()
    with pytest.raises(ConfigError, match="unknown config key 'loss.temprature'"):
        apply_override(c, "loss.temprature=0.5")
    with pytest.raises(ConfigError, match="unknown config key 'los'"):
        apply_override(c, "los.temperature=0.5")
    with pytest.raises(ConfigError, match="'loss.temperature' is float"):
        apply_override(c, "loss.temperature=fast")
    with pytest.raises(ConfigError, match="'epochs' is int"):
        apply_override(c, "epochs=True")
    apply_override(c, "loss.temperature=1")
    assert c.loss.temperature == 1.0 and isinstance(c.loss.temperature, float)
    apply_override(c, "model.widths=(4, 8)")
    assert c.model.widths == (4, 8)
    apply_override(c, "loss.final_temperature=0.1")
    assert c.loss.final_temperature == 0.1
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.py"))
    with pytest.raises(ConfigError, match="unknown config variant"):
        load_config(os.path.join(CONFIGS, "cifar10_cpu.py:focal"))
    cpu = load_config(os.path.join(CONFIGS, "cifar10_cpu.py:hard-m1"))
    assert cpu.loss.name == "hard" and cpu.loss.margin == 1.0
    assert load_config(os.path.join(CONFIGS, "cifar10.py:lse")).model.name == "resnet18"
    with pytest.raises(ValueError, match="unknown objective"):
        c2 = tiny_config()
        c2.loss.name = "focal"
        train.train_and_evaluate(c2, tmp_path / "x", progress=False)
    with pytest.raises(ConfigError, match="not of the form key=value"):
        apply_override(c, "epochs")
