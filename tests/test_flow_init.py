"""Pre-trained temporal streams (model.flow_init): export from a checkpoint, start a model from it (head fresh),
the shipped motion stream, and one-line errors for files that are not ours, do not fit, or would run code."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from actionflow.__main__ import main
from actionflow.flow_init import FlowInitError, export
from actionflow.model import FLOW_INITS, ModelConfigError, flow_init_state
from actionflow.module import ActionRecognizer

ROOT = Path(__file__).resolve().parents[1]


def _checkpoint(tmp_path, mode="flow", flow_length=3, classes=4, **kw):
    torch.manual_seed(0)
    module = ActionRecognizer(num_classes=classes, mode=mode, backbone="small_cnn", flow_length=flow_length, **kw)
    path = tmp_path / f"{mode}.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return module, path


@pytest.mark.parametrize("mode", ["flow", "two_stream"])
def test_export_then_start_from_it(tmp_path, mode):
    trained, ckpt = _checkpoint(tmp_path, mode)
    out = export(ckpt, tmp_path / "init.pt", note="test stream")
    torch.manual_seed(1)
    fresh = ActionRecognizer(num_classes=2, mode="two_stream", backbone="small_cnn", flow_length=3, flow_init=str(out))
    source, target = trained.net.flow.net.state_dict(), fresh.net.flow.net.state_dict()
    for key, value in target.items():
        if key.startswith("fc."):
            assert value.shape[0] == 2  # a head of this task's classes, fresh
        else:
            assert torch.equal(value, source[key]), key
    assert not torch.equal(fresh.net.rgb.net.features[0].weight, trained.net.flow.net.features[0].weight[:, :3])
    state = flow_init_state(str(out), "small_cnn", 6)
    assert not any(k.startswith("fc.") for k in state) and "features.0.weight" in state
    blob = torch.load(out, weights_only=True)
    assert blob["note"] == "test stream" and blob["in_channels"] == 6 and blob["backbone"] == "small_cnn"


def test_an_rgb_model_ignores_flow_init(tmp_path):
    _, ckpt = _checkpoint(tmp_path)
    out = export(ckpt, tmp_path / "init.pt", note="")
    assert ActionRecognizer(num_classes=2, mode="rgb", backbone="small_cnn", flow_init=str(out)).net.flow is None


def test_an_out_that_cannot_be_written_is_one_line(tmp_path, capsys):
    _, ckpt = _checkpoint(tmp_path)
    assert main(["flow-init", str(ckpt), "/proc/no_such/init.pt", "--note", "x"]) == 2
    assert "flow-init: error: /proc/no_such/init.pt: cannot write it" in capsys.readouterr().err


def test_what_does_not_fit_is_a_one_line_error(tmp_path):
    _, ckpt = _checkpoint(tmp_path)
    out = export(ckpt, tmp_path / "init.pt", note="L=3")
    with pytest.raises(ModelConfigError, match="small_cnn stream on 6 input channels; this model's is small_cnn on 10"):
        ActionRecognizer(num_classes=2, mode="flow", backbone="small_cnn", flow_length=5, flow_init=str(out))
    with pytest.raises(ModelConfigError, match="on 7 .*flow_norm snippet"):  # snippet norm: one more channel
        ActionRecognizer(num_classes=2, mode="flow", backbone="small_cnn", flow_length=3, flow_norm="snippet", flow_init=str(out))
    with pytest.raises(ModelConfigError, match=r"does not fit the small_cnn stream: .*size mismatch"):  # other widths
        ActionRecognizer(num_classes=2, mode="flow", backbone="small_cnn", flow_length=3, cnn_widths=[32, 64, 128, 128],
                         flow_init=str(out))
    with pytest.raises(ModelConfigError, match="no such file .*motion"):
        ActionRecognizer(num_classes=2, mode="flow", backbone="small_cnn", flow_init=str(tmp_path / "nope.pt"))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")  # a torch file, not ours
    with pytest.raises(ModelConfigError, match="not a flow-init file"):
        flow_init_state(str(tmp_path / "other.pt"), "small_cnn", 6)
    torch.save({"format": "actionflow-flow-init-1", "backbone": "small_cnn", "in_channels": 6, "state_dict": {"a": 1}},
               tmp_path / "bad_state.pt")
    with pytest.raises(ModelConfigError, match="not a dict of tensors"):
        flow_init_state(str(tmp_path / "bad_state.pt"), "small_cnn", 6)
    blob = torch.load(out, weights_only=True)
    blob["state_dict"]["features.0.weight"][0, 0, 0, 0] = float("nan")
    torch.save(blob, tmp_path / "nan.pt")
    with pytest.raises(ModelConfigError, match="NaN or infinite"):
        flow_init_state(str(tmp_path / "nan.pt"), "small_cnn", 6)
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ModelConfigError, match="cannot be read as a PyTorch flow-init weights"):
        flow_init_state(str(tmp_path / "text.pt"), "small_cnn", 6)
    _, rgb_ckpt = _checkpoint(tmp_path, mode="rgb")
    with pytest.raises(FlowInitError, match="no flow stream"):
        export(rgb_ckpt, tmp_path / "x.pt", note="")
    assert main(["flow-init", str(rgb_ckpt), str(tmp_path / "x.pt"), "--note", "n"]) == 2
    assert main(["flow-init", str(ckpt), str(tmp_path / "y.pt"), "--note", "n"]) == 0 and (tmp_path / "y.pt").is_file()


def test_a_code_running_pickle_is_refused_not_run(tmp_path):
    from hostile_files import code_running_checkpoint

    evil = code_running_checkpoint(tmp_path / "evil.pt", tmp_path / "pwned")
    with pytest.raises(ModelConfigError, match=r"model.flow_init: .*evil\.pt: cannot be read .*weights_only=True"):
        ActionRecognizer(num_classes=2, mode="flow", backbone="small_cnn", flow_init=str(evil))
    assert not (tmp_path / "pwned").exists()


def test_train_py_says_a_bad_flow_init_in_one_line(tmp_path):
    out = subprocess.run([sys.executable, "train.py", "--model.flow_init", str(tmp_path / "nope.pt"), "--data.root",
                          str(tmp_path / "data"), "--trainer.default_root_dir", str(tmp_path / "run")],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "WANDB_MODE": "disabled"})
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1].startswith("train.py: error: model.flow_init")
    assert "Traceback" not in out.stderr


def test_the_shipped_motion_stream_fits_the_real_footage_recipe():
    path = FLOW_INITS["motion"]
    assert path.is_file(), f"{path} is shipped with the package"
    blob = torch.load(path, weights_only=True)
    assert blob["backbone"] == "small_cnn" and blob["in_channels"] == 11 and "motion" in blob["note"]
    assert path.stat().st_size < 3e6  # small enough to live in the repository
    model = ActionRecognizer(num_classes=3, mode="flow", backbone="small_cnn", flow_length=5, flow_norm="snippet",
                             flow_init="motion")
    assert torch.equal(model.net.flow.net.features[0].weight, blob["state_dict"]["features.0.weight"])
    assert model.net.flow.net.fc[1].out_features == 3


def test_the_weights_are_package_data():
    """A non-editable install carries the weights and their model card (pyproject's package-data)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = data.get("actionflow", [])
    assert any(Path("weights/flow_motion_small_cnn.pt").match(p) for p in patterns), patterns
    assert any(Path("weights/README.md").match(p) for p in patterns), patterns
