from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from recsys_bert.arguments import ALL_ARGUMENTS, parse_args
from recsys_bert.utils import InputError
from tests.conftest import REPO_ROOT


def test_yaml_sets_values_and_flags_override_them(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("max_steps: 3\nlearning_rate: 1e-4\neval_ks: [5, 10]\nexclude_history: true\npooling: cls\n")
    model_args, data_args, training_args = parse_args(["--config", str(config), "--max_steps", "7"])
    assert training_args.max_steps == 7  # the flag wins
    assert training_args.learning_rate == 1e-4  # YAML's 1e-4 (read as a string by YAML 1.1) is a float
    assert training_args.eval_ks == [5, 10] and training_args.exclude_history is True
    assert model_args.pooling == "cls" and data_args.data_format == "generic"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_steps: 3\nbogus: 1\n", "line 2, field 'bogus': unknown setting"),
        ("max_steps: 3.5\n", "line 1, field 'max_steps': 3.5 is not of type int"),
        ("exclude_history: maybe\n", "field 'exclude_history': 'maybe' is not of type bool"),
        ("max_steps: [1\n", "not valid YAML"),
    ],
)
def test_bad_yaml_names_file_line_and_field(tmp_path, text, message):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    with pytest.raises(InputError, match=message.replace("[", r"\[")):
        parse_args(["--config", str(config)])


def test_every_setting_is_a_flag_with_help():
    result = subprocess.run([sys.executable, "train.py", "--help"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0
    for cls in ALL_ARGUMENTS:
        for f in dataclasses.fields(cls):
            assert f"--{f.name}" in result.stdout
            assert f.metadata.get("help"), f.name
    for name in ("--items", "--interactions", "--output_dir", "--max_steps", "--finetune_layers", "--seed",
                 "--save_steps", "--resume_from_checkpoint", "--config"):  # fmt: skip
        assert name in result.stdout


def test_shipped_configs_parse():
    for config in sorted((REPO_ROOT / "configs").glob("*.yaml")):
        parse_args(["--config", str(config)])
