"""train.py's configuration: every default has one home, the printed config is what a run uses,
``-c`` is ``--config``, and the old name of a key still works."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_videos import make_dataset

from actionflow.data import DataConfigError

ROOT = Path(__file__).resolve().parents[1]


def _load_train():
    spec = importlib.util.spec_from_file_location("train_entry", ROOT / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def print_config(*args: str) -> str:
    out = subprocess.run([sys.executable, "train.py", *args, "--print_config"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_a_config_that_sets_nothing_is_what_print_config_shows(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# sets nothing\n{}\n")
    default = print_config()
    assert "backbone: small_cnn" in default and "flow_engine: dis_fine" in default and "root: data/demo" in default
    assert print_config("--config", str(empty)) == default


def test_short_and_long_config_flags_are_the_same(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("model:\n  lr: 0.0005\ndata:\n  root: elsewhere\n  test_clips: 4\n")
    long = print_config("--config", str(mine))
    assert "lr: 0.0005" in long and "root: elsewhere" in long and "test_clips: 4" in long
    assert "backbone: small_cnn" in long  # every key it does not set keeps the printed default
    assert print_config("-c", str(mine)) == long


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("tiny"), per_class=4, frames=6, size=32, classes=("right", "left"))


def test_the_old_flow_model_key_sets_the_data_and_the_model_engine(tiny, tmp_path):
    train = _load_train()
    argv = ["--data.root", str(tiny), *(f"--data.{s}_list={tiny / s}.txt" for s in ("train", "val", "test")),
            "--data.cache_dir", str(tmp_path),
            "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)]
    with pytest.warns(FutureWarning, match="data.flow_model is deprecated"):
        old = train.build_cli(argv + ["--data.flow_model", "tvl1"])
    assert old.datamodule.hparams.flow_engine == old.model.hparams.flow_engine == "tvl1"
    new = train.build_cli(argv + ["--data.flow_engine", "tvl1"])
    assert new.datamodule.hparams.flow_engine == new.model.hparams.flow_engine == "tvl1"
    # an old config's flow_model under a command line's flow_engine: which one was meant cannot be known
    with pytest.raises(DataConfigError, match="keep data.flow_engine alone"):
        train.build_cli(argv + ["--data.flow_model", "tvl1", "--data.flow_engine", "dis"])


def test_a_width_x_height_size_on_the_command_line_is_refused_with_the_form_to_write(capsys):
    train = _load_train()
    for key, text, words in (("size", "340x256", "write --data.size '[256, 340]'"),
                             ("crop_size", "112x96", "write --data.crop_size '[96, 112]'")):  # was jsonargparse's union error
        for argv in ([f"--data.{key}", text], [f"--data.{key}={text}"]):
            with pytest.raises(SystemExit) as exit_:
                train.build_cli(argv)
            assert exit_.value.code == 2 and words in capsys.readouterr().err


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_config_parses(config):
    """A key a config sets that the code no longer has (a renamed setting) is an error at once, not on a user's run."""
    shown = print_config("--config", f"configs/{config}")
    assert "seed_everything: 0" in shown
