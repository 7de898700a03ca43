"""The walkthrough notebook runs from top to bottom (small settings, a tiny checkpoint trained here)."""
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_walkthrough_executes(tmp_path, monkeypatch):
    run = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "train.py", "--data.root", str(tmp_path / "demo"),
         "--data.demo", "{clips_per_class: 3, frames: 8, size: 48, workers: 1}",
         "--data.cache_dir", str(tmp_path / "cache"), "--data.size", "[48, 48]", "--data.crop_size", "[48, 48]",
         "--data.num_segments", "2", "--data.flow_length", "3", "--data.test_clips", "1", "--data.num_workers", "0",
         "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(run), "--trainer.logger", "CSVLogger",
         "--trainer.logger.init_args.save_dir", str(run), "--trainer.enable_progress_bar", "false",
         "--checkpoint.save_last", "false"],  # the default config's model (small_cnn, dis_fine flow)
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    ckpt = out.stdout.strip().splitlines()[-2].removeprefix("checkpoint: ")
    monkeypatch.setenv("WALKTHROUGH_FRAMES", "6")
    monkeypatch.setenv("WALKTHROUGH_ENGINE", "dis")
    monkeypatch.setenv("WALKTHROUGH_CKPT", ckpt)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(ROOT / "notebooks" / "walkthrough.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "tag 202021.25" in text
    assert "smaller than .flo" in text
    assert "true class:" in text and "two_stream" in text
