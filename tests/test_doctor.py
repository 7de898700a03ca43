"""flow_engine doctor: the CPU-only report is healthy; a broken part is BROKEN with a fix and exit 1."""
from __future__ import annotations

import json

import pytest
import torch

from flow_engine.commands import doctor
from flow_engine.__main__ import main as cli

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only report")
def test_cpu_only_machine_is_healthy_and_says_why_gpu_parts_are_missing(tmp_path, capsys):
    out = tmp_path / "doctor.json"
    assert cli(["doctor", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["healthy"] is True
    assert report["versions"]["torch"] == torch.__version__ and report["versions"]["opencv"]
    assert report["devices"][0]["device"] == "cpu" and report["devices"][0]["memory_gib"] > 0
    status = {c["name"]: c for c in report["checks"]}
    assert status["CUDA visible to torch"]["status"] == "not available"
    assert status["correlation kernels float32 cpu"]["status"] == "not available"
    assert "CUDA" in status["correlation kernels bfloat16 cpu"]["detail"]
    for name in ("PyTorch cost volume", "pwcnet runs a pair on cpu", "raft_small runs a pair on cpu",
                 "shipped PWC-Net weights load", "PyAV encodes H.264", "decord decodes video"):
        assert status[name]["status"] == "OK", status[name]
    assert "sha256[:16]" in status["shipped PWC-Net weights load"]["detail"]
    text = capsys.readouterr().out
    assert "healthy: everything this machine can do works" in text and "BROKEN" not in text


def test_a_broken_part_is_named_with_its_fix_and_fails_the_exit_status(tmp_path, monkeypatch, capsys):
    import flow_engine.engine

    bad = tmp_path / "pwcnet_actionflow.pt"
    bad.write_bytes(b"not a checkpoint")
    monkeypatch.setattr(flow_engine.engine, "DEFAULT_WEIGHTS", bad)
    monkeypatch.setattr(doctor, "check_video", lambda: [])  # keep the test short
    assert cli(["doctor", "--json", str(tmp_path / "r.json")]) == 1
    report = json.loads((tmp_path / "r.json").read_text())
    weights = next(c for c in report["checks"] if c["name"] == "shipped PWC-Net weights load")
    assert weights["status"] == "BROKEN" and "reinstall" in weights["fix"]
    assert report["healthy"] is False
    text = capsys.readouterr().out
    assert "BROKEN" in text and "fix: reinstall the package" in text


def test_cupy_missing_on_a_gpu_machine_is_not_broken(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_cupy(name, *args, **kwargs):
        if name == "cupy":
            raise ImportError("No module named 'cupy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(builtins, "__import__", no_cupy)
    check = doctor.check_cupy()
    assert check.status == "not available" and "PyTorch cost volume" in check.detail
    assert check.fix.startswith("pip install cupy-cuda")


@pytest.mark.gpu
def test_gpu_kernels_agree_with_the_pytorch_path_in_every_precision():
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        check = doctor.check_kernels(torch.device("cuda"), dtype)
        assert check.status in ("OK", "not available"), check  # bf16 is absent on pre-Ampere GPUs
    assert doctor.check_kernels(torch.device("cuda"), torch.float32).status == "OK"
    assert doctor.check_engine("pwcnet", torch.device("cuda")).status == "OK"


def test_an_output_that_cannot_be_a_file_is_refused_before_the_checks(tmp_path, capsys, monkeypatch):
    ran = []
    monkeypatch.setattr(doctor, "run_checks", lambda *a: ran.append(1) or [])
    (tmp_path / "file").write_text("")
    for out, words in ((tmp_path, "is a folder; name a file in it"), (tmp_path / "file" / "r.json", "is a file, not a folder")):
        with pytest.raises(SystemExit) as exc:
            cli(["doctor", "--json", str(out)])
        assert exc.value.code == 2 and words in capsys.readouterr().err
    assert not ran
    # a file that still cannot be written (no permission, a read-only folder): an error, the report printed first
    monkeypatch.setattr(doctor, "run_checks", lambda *a: [doctor.Check("a check", doctor.OK)])
    monkeypatch.setattr(type(tmp_path), "write_text", lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
    assert cli(["doctor", "--json", str(tmp_path / "r.json")]) == 2
    captured = capsys.readouterr()
    assert "healthy" in captured.out and f"error: cannot write {tmp_path / 'r.json'} (Permission denied)" in captured.err
