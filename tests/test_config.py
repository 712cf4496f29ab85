"""Configs as code: loading ``file.py:variant``, type-checked overrides, validation, clear errors."""

import glob
import os

import pytest

from smoothmax import train
from smoothmax.config import ConfigError, apply_override, base_config, load_config, validate_config
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
    validate_config(cpu, devices=1)
    assert load_config(os.path.join(CONFIGS, "cifar10.py:lse")).model.widths == (64, 256, 256)
    assert load_config(os.path.join(CONFIGS, "cifar10_resnet18.py:lse")).model.name == "resnet18"
    with pytest.raises(ValueError, match="focal"):
        c2 = tiny_config()
        c2.loss.name = "focal"
        train.train_and_evaluate(c2, tmp_path / "x", progress=False)
    with pytest.raises(ConfigError, match="not of the form key=value"):
        apply_override(c, "epochs")


# Overrides the parser refuses: (override, key the error names). ast.literal_eval raises TypeError,
# MemoryError or RecursionError on some of these; each must become a ConfigError.
UNPARSABLE = [
    ("seed=1+", "seed"),
    ("seed=1.5", "seed"),
    ("epochs=1e400", "epochs"),
    ("model.widths=(1,", "model.widths"),
    ("model.widths=5", "model.widths"),
    ("model.widths={[1]: 2}", "model.widths"),  # TypeError: unhashable list
    ("model.widths=" + "(" * 100_000, "model.widths"),
    ("model.widths=" + "-" * 100_000 + "1", "model.widths"),  # MemoryError in the parser
    ("model.widths=[" + "-" * 50_000 + "1]", "model.widths"),
    ("data.augment=1", "data.augment"),
    ("loss=1", "loss"),
]


@pytest.mark.parametrize("item, key", UNPARSABLE, ids=lambda x: x[:24] if isinstance(x, str) else None)
def test_unparsable_overrides_are_config_errors_naming_the_key(item, key):
    with pytest.raises(ConfigError, match=f"'{key}'") as err:
        apply_override(base_config(), item)
    assert "\n" not in str(err.value) and len(str(err.value)) < 200


def test_overrides_parse_by_the_type_of_their_key():
    c = base_config()
    for item in ("loss.final_temperature=0.1", "loss.final_margin=-1", "data.augment=false", "loss.name='lse'",
                 "data.path=/tmp/a b", "model.widths=[4, 8]", "optimizer.learning_rate=1e-3"):
        apply_override(c, item)
    assert c.loss.final_temperature == 0.1 and c.loss.final_margin == -1.0
    assert isinstance(c.loss.final_margin, float) and c.data.augment is False
    assert (c.loss.name, c.data.path, c.model.widths) == ("lse", "/tmp/a b", (4, 8))
    apply_override(c, "loss.final_temperature=None")
    assert c.loss.final_temperature is None
    validate_config(c, devices=1)
    with pytest.raises(AttributeError, match="batch_sise"):  # base_config is locked: a typo is no new key
        c.data.batch_sise = 64


# Values a run cannot use: (override, key the error names). The first three are issue 11's failure 4.
BAD_VALUES = [
    ("loss.temperature=-0.5", "loss.temperature"),
    ("epochs=0", "epochs"),
    ("eval_every_epochs=0", "eval_every_epochs"),
    ("loss.temperature=nan", "loss.temperature"),
    ("loss.temperature=inf", "loss.temperature"),
    ("loss.final_temperature=-1", "loss.final_temperature"),
    ("loss.margin=inf", "loss.margin"),
    ("loss.final_margin=nan", "loss.final_margin"),
    ("loss.name=focal", "loss.name"),
    ("log_every_steps=0", "log_every_steps"),
    ("checkpoint.every_epochs=0", "checkpoint.every_epochs"),
    ("checkpoint.keep=0", "checkpoint.keep"),
    ("data.name=mnist", "data.name"),
    ("data.batch_size=0", "data.batch_size"),
    ("data.batch_size=2048", "data.batch_size"),  # more than the 1024 training images
    ("data.eval_batch_size=0", "data.eval_batch_size"),
    ("data.train_subset=-1", "data.train_subset"),
    ("data.num_train=0", "data.num_train"),
    ("data.difficulty=1.5", "data.difficulty"),
    ("data.seed=-1", "data.seed"),
    ("model.name=vgg", "model.name"),
    ("model.head=arc", "model.head"),
    ("model.widths=()", "model.widths"),
    ("model.widths=(8, 0)", "model.widths"),
    ("model.compute_dtype=float16", "model.compute_dtype"),
    ("optimizer.name=lion", "optimizer.name"),
    ("optimizer.decay=step", "optimizer.decay"),
    ("optimizer.learning_rate=0", "optimizer.learning_rate"),
    ("optimizer.warmup_fraction=1", "optimizer.warmup_fraction"),
    ("optimizer.weight_decay=-1e-4", "optimizer.weight_decay"),
    ("epochs=None", "epochs"),
    ("optimizer.bias_scale=0", "optimizer.bias_scale"),
    ("optimizer.lookahead_every=-1", "optimizer.lookahead_every"),
    ("optimizer.lookahead_decay=1", "optimizer.lookahead_decay"),
    ("model.head_scale=0", "model.head_scale"),
    ("data.alternate_flips=None", "data.alternate_flips"),
]


def small_config():
    c = base_config()
    c.data.num_train = 1024
    c.data.batch_size = 64
    return c


@pytest.mark.parametrize("item, key", BAD_VALUES)
def test_validate_config_names_the_bad_key(item, key):
    c = small_config()
    validate_config(c, devices=1)
    apply_override(c, item)
    with pytest.raises(ConfigError, match=f"^config key '{key}' = .*: must be ") as err:
        validate_config(c, devices=1)
    assert "\n" not in str(err.value)


def test_a_head_scale_needs_a_linear_head():
    c = small_config()
    c.model.head, c.model.head_scale = "cosine", 0.5
    with pytest.raises(ConfigError, match="'model.head' = 'cosine': must be linear when model.head_scale is set"):
        validate_config(c, devices=1)


def test_validate_config_knows_the_devices_and_the_training_set():
    c = small_config()
    c.data.batch_size, c.data.eval_batch_size = 96, 4
    validate_config(c, devices=1)
    with pytest.raises(ConfigError, match=r"'data.batch_size' = 96: must be a multiple of the number of devices \(64\)"):
        validate_config(c, devices=64)
    with pytest.raises(ConfigError, match="'data.eval_batch_size' = 4: must be an integer >= 8"):
        validate_config(c, devices=8)
    c.data.name, c.data.batch_size = "cifar10", 4096  # the size of CIFAR-10 is not the config's to know
    validate_config(c, devices=1)
    c.data.train_subset = 1000
    with pytest.raises(ConfigError, match="'data.batch_size' = 4096: must be at most the 1000 training examples"):
        validate_config(c, devices=1)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(CONFIGS, "*.py"))), ids=os.path.basename)
def test_shipped_configs_pass_validation(path):
    validate_config(load_config(path), devices=1)
