"""The web page (``python -m actionflow app``): classify's numbers through Gradio's client and in a real
Chromium, bad uploads, safety (client paths, size limit, temporary files, the queue), and the Flow tab
against the engine and the metrics called directly. The checkpoint is a one-epoch run of train.py on a
tiny demo set (test_train_e2e's arguments)."""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_videos import render, write_mp4

pytest.importorskip("gradio", reason='the app extra is not installed: pip install -e ".[app]"')
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from test_train_e2e import train, train_argv  # noqa: E402

from actionflow.__main__ import main  # noqa: E402
from actionflow.app import ActionflowApp, UploadError, bench, bind_note, extract_frames, find_checkpoint  # noqa: E402
from actionflow.classify import load_checkpoint, predict  # noqa: E402
from flow_engine import FlowEngine, read_flow, write_flow  # noqa: E402
from flow_engine.io.flow_files import read_image, write_image  # noqa: E402
from flow_engine.metrics import flow_metrics  # noqa: E402
from flow_engine.io.video import probe, read_frames  # noqa: E402

pytestmark = pytest.mark.slow
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, Path]:
    """(best checkpoint, demo root): train.py, one epoch, on a demo set of 4 clips per class at 64x64."""
    root = tmp_path_factory.mktemp("app") / "demo"
    argv = train_argv(root, root.parent / "run", logger="none") + [
        "--data.demo", "{clips_per_class: 4, frames: 16, size: 64}", "--data.flow_engine", "dis"]
    assert train.main(argv) == 0
    return next((root.parent / "run" / "checkpoints").glob("best*.ckpt")), root


@pytest.fixture(scope="module")
def tests(demo) -> list[Path]:
    root = demo[1]
    return [root / line.split()[0] for line in (root / "test.txt").read_text().splitlines()]


@pytest.fixture(scope="module")
def served(demo):
    """The page on a free local port (1 MB upload limit, so that 'too large' is cheap to test); its URL."""
    app = ActionflowApp(demo[0], device="cpu", max_upload_mb=1)
    url = app.start()
    yield app, url
    gradio_folder = Path(os.environ["GRADIO_TEMP_DIR"])
    app.close()
    assert not app.root.exists() and not gradio_folder.exists()  # every file the page wrote is gone, and every upload


@pytest.fixture(scope="module")
def client(served) -> Client:
    return Client(served[1], verbose=False)


def cli_json(ckpt: Path, video: Path, capsys) -> dict:
    capsys.readouterr()
    assert main(["classify", str(video), "--ckpt", str(ckpt), "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    result["video"] = video.name  # the page names an upload by its file name
    return result


def test_the_page_offers_the_demo_test_videos_as_examples(served, tests):
    assert served[0].examples and set(served[0].examples) <= set(tests)
    assert len({p.parent.name for p in served[0].examples}) == len(served[0].examples)  # one per class first


def test_api_returns_exactly_what_classify_prints(client, demo, tests, capsys):
    for video in tests[:2]:
        assert client.predict(handle_file(str(video)), api_name="/classify") == cli_json(demo[0], video, capsys)


def test_the_snippets_shown_are_what_the_network_scored(demo, tests):
    model, hparams = load_checkpoint(demo[0], "cpu")
    pred = predict(model, hparams, tests[0], snippets=True)
    S, L = pred.flow.shape[:2]
    assert pred.frames.shape[:2] == (S, L + 1) and S == len(pred.starts) == 2 * 2  # clips x segments
    rgb, flow = pred.frames[:, 0][None], pred.flow.flatten(1, 2)[None]
    again = model.predict_proba({"rgb": rgb, "flow": flow})
    assert all(torch.equal(again[k][0], pred.probs[k]) for k in pred.probs)  # bit for bit: the same inputs
    for s in range(S):  # each snippet's row is that snippet scored alone
        alone = model.predict_proba({"rgb": rgb[:, s : s + 1], "flow": flow[:, s : s + 1]})
        for k in pred.probs:
            torch.testing.assert_close(pred.snippet_probs[k][s], alone[k][0], atol=1e-5, rtol=1e-5)


def test_page_endpoint_shows_the_same_numbers_with_video_and_plot(client, demo, tests, capsys):
    html, video, plot, details, result = client.predict(handle_file(str(tests[1])), api_name="/classify_page")
    expected = cli_json(demo[0], tests[1], capsys)
    assert result == expected
    top = expected["topk"][0]
    assert f'class="af-label">{top["label"]}<' in html and f'{top["prob"]:.6f}' in html
    for stream, rows in expected["streams"].items():
        assert f'id="af-top-{stream}"' in html and f'{rows[0]["prob"]:.6f}' in html
    assert probe(video).num_frames == 4 * 3  # 4 snippets x 3 flows, RGB | flow side by side
    assert plot["type"] == "matplotlib" and plot["plot"].startswith("data:image/")
    assert "4 snippets" in details and "`dis`" in details and "flow" in details


def test_a_frame_folder_zip_gives_what_classify_gives_on_the_folder(client, demo, tests, tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(read_frames(tests[2]), 1):
        write_image(folder / f"img_{i:05d}.png", frame)
    archive = tmp_path / "frames.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"clip/{f.name}")
    got = client.predict(handle_file(str(archive)), api_name="/classify")
    capsys.readouterr()
    assert main(["classify", str(folder), "--ckpt", str(demo[0]), "--json", "--device", "cpu",
                 "--frame-pattern", "img_{:05d}.png"]) == 0
    expected = json.loads(capsys.readouterr().out)
    assert got["topk"] == expected["topk"] and got["streams"] == expected["streams"]


def _bad_uploads(tmp: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, words the page's message must hold)."""
    data = good.read_bytes()
    files = {
        "text.mp4": (b"just some text, not a video\n", "cannot open as a video"),
        "empty.mp4": (b"", "empty file"),
        "corrupt.mp4": (b"\x00\x00\x00\x20ftypisom" + bytes(300), "cannot open as a video"),
        "truncated.mp4": (data[: len(data) // 2], "truncated.mp4:"),
        "notes.txt": (b"hello", "Invalid file type"),  # Gradio refuses it before the page sees it
        "big.mp4": (bytes(1_500_000), "exceeds the maximum file size"),  # the served page's limit is 1 MB
    }
    out = {}
    for name, (content, words) in files.items():
        (tmp / name).write_bytes(content)
        out[name] = (tmp / name, words)
    evil = tmp / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../escaped.png", b"x")
    out["evil.zip"] = (evil, "unsafe entry")
    empty_zip = tmp / "nothing.zip"
    with zipfile.ZipFile(empty_zip, "w") as zf:
        zf.writestr("readme.txt", b"no frames here")
    out["nothing.zip"] = (empty_zip, "no image files")
    locked = tmp / "locked.zip"
    with zipfile.ZipFile(locked, "w") as zf:
        zf.writestr("img_00001.png", b"x")
    data = bytearray(locked.read_bytes())
    for signature, flags in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # the local and central headers' "encrypted" bit
        data[data.find(signature) + flags] |= 1
    locked.write_bytes(bytes(data))
    out["locked.zip"] = (locked, "locked.zip: 'img_00001.png' is encrypted")
    return out


def _one_clear_line(message: str) -> None:
    """A message for the page: one line, no traceback, no folder of the server's (the app's, Gradio's uploads)."""
    assert "\n" not in message.strip() and "Traceback" not in message, message
    assert "actionflow-app-" not in message and os.environ["GRADIO_TEMP_DIR"] not in message, message


def test_bad_uploads_are_one_clear_line_and_the_page_keeps_serving(client, demo, tests, tmp_path, capsys):
    for name, (path, words) in _bad_uploads(tmp_path, tests[0]).items():
        with pytest.raises((AppError, ValueError)) as err:
            client.predict(handle_file(str(path)), api_name="/classify")
        message = str(err.value)
        assert words in message, (name, message)
        if name != "notes.txt":  # Gradio's own refusal of a file type, before the page
            _one_clear_line(message)
    assert not (tmp_path.parent / "escaped.png").exists()
    import httpx  # a client that does not check the limit itself is refused by the server

    with open(tmp_path / "big.mp4", "rb") as f:
        response = httpx.post(f"{client.src.rstrip('/')}/gradio_api/upload", files={"files": f}, timeout=60)
    assert response.status_code == 413, response.text
    assert client.predict(handle_file(str(tests[0])), api_name="/classify") == cli_json(demo[0], tests[0], capsys)


def test_a_single_frame_is_classified_with_a_note(client, demo, tmp_path, capsys):
    one = write_mp4(tmp_path / "one.mp4", render("right", frames=1, size=64))
    html, video, plot, details, result = client.predict(handle_file(str(one)), api_name="/classify_page")
    assert result == cli_json(demo[0], one, capsys)
    assert "single frame" in details and probe(video).num_frames == 4 * 3


def test_an_hour_long_video_is_sampled_not_decoded(client, demo, tmp_path, capsys):
    frames = np.repeat(render("left", frames=36, size=32), 200, axis=0)  # 7200 frames at 2 fps: 1 h
    hour = write_mp4(tmp_path / "hour.mp4", frames, fps=2)
    started = time.perf_counter()
    html, video, plot, details, result = client.predict(handle_file(str(hour)), api_name="/classify_page")
    assert time.perf_counter() - started < 30
    assert "7200 frames" in details and "3600.0 s" in details
    assert result == cli_json(demo[0], hour, capsys)


def test_no_path_named_by_a_client_is_opened(served, tests, tmp_path):
    import httpx

    url = served[1].rstrip("/")
    # a real video outside the upload folder: classified if it were opened
    payload = {"data": [{"path": str(tests[0]), "meta": {"_type": "gradio.FileData"}}]}
    event = httpx.post(f"{url}/gradio_api/call/classify", json=payload, timeout=30).json()["event_id"]
    stream = httpx.get(f"{url}/gradio_api/call/classify/{event}", timeout=60).text
    assert "event: error" in stream and "topk" not in stream, stream
    assert httpx.get(f"{url}/gradio_api/file={tests[0]}", timeout=30).status_code in (403, 404)
    # frames outside the upload folder, sent as an image's data without its 'meta' field: Gradio lets them through
    frames = [{"path": str(tmp_path / name)} for name in ("a.png", "b.png")]
    for frame in frames:
        write_image(Path(frame["path"]), np.zeros((64, 64, 3), np.uint8))
    event = httpx.post(f"{url}/gradio_api/call/flow", json={"data": [*frames, None, "dis", None]}, timeout=30).json()["event_id"]
    stream = httpx.get(f"{url}/gradio_api/call/flow/{event}", timeout=60).text
    assert "event: error" in stream and "a.png: not a file uploaded to this page" in stream, stream


def test_two_users_at_once_get_two_right_answers(served, demo, tests, capsys):
    expected = {v: cli_json(demo[0], v, capsys) for v in tests[:2]}
    got: dict[Path, dict] = {}

    def ask(video: Path) -> None:
        got[video] = Client(served[1], verbose=False).predict(handle_file(str(video)), api_name="/classify")

    threads = [threading.Thread(target=ask, args=(v,)) for v in tests[:2]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert got == expected


def _shifted_pair(tmp: Path, dx: int = 2, dy: int = 1) -> tuple[Path, Path, Path, np.ndarray]:
    """Two PNG frames of a smooth texture moved by (dx, dy) px, and the ground truth .flo."""
    rng = np.random.default_rng(0)
    big = torch.nn.functional.interpolate(torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(0)),
                                          size=(96 + dy, 128 + dx), mode="bicubic", align_corners=False)
    big = (big.clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    a, b = big[dy:, dx:], big[:-dy, :-dx]  # b at (x, y) is a at (x - dx, y - dy): flow (dx, dy)
    write_image(tmp / "a.png", np.ascontiguousarray(a))
    write_image(tmp / "b.png", np.ascontiguousarray(b))
    truth = np.zeros((96, 128, 2), np.float32) + np.float32([dx, dy]) + rng.normal(0, 0.01, (96, 128, 2)).astype(np.float32)
    write_flow(tmp / "truth.flo", truth)
    return tmp / "a.png", tmp / "b.png", tmp / "truth.flo", truth


def test_flow_tab_gives_the_engine_s_flow_and_its_epe(client, tmp_path):
    a, b, truth_file, truth = _shifted_pair(tmp_path)
    image, video, timing, flo, error_map, scores = client.predict(
        handle_file(str(a)), handle_file(str(b)), None, "dis", handle_file(str(truth_file)), api_name="/flow")
    frames = [torch.from_numpy(read_image(p)).permute(2, 0, 1)[None] for p in (a, b)]
    expected = FlowEngine("dis")(*frames)[0].permute(1, 2, 0).numpy()
    got, valid = read_flow(flo)
    assert valid.all() and np.array_equal(got, expected)  # the .flo is the engine's flow, as computed
    m = flow_metrics(expected, truth)
    assert f"EPE {m['epe']:.3f} px" in scores and m["epe"] < 0.5  # DIS finds a 2 px shift
    assert "`dis`" in timing and "128×96" in timing and video is None and error_map and image


def test_flow_tab_on_a_video_and_bad_flow_inputs(client, tests, tmp_path):
    image, video, timing, flo, error_map, scores = client.predict(
        None, None, handle_file(str(tests[0])), "farneback", None, api_name="/flow")
    with zipfile.ZipFile(flo) as zf:
        assert len(zf.namelist()) == 15  # 16 frames, 15 flows
    assert probe(video).num_frames == 15 and "15 flow field(s)" in timing
    a, b, truth, _ = _shifted_pair(tmp_path)
    small = tmp_path / "small.png"
    write_image(small, np.zeros((10, 12, 3), np.uint8))
    huge = tmp_path / "huge.png"
    write_image(huge, np.zeros((8, 2049, 3), np.uint8))  # a side over the page's cap: refused from its header
    for args, words in (((a, small, None, "dis", None), "must share one size"),
                        ((huge, huge, None, "tvl1", None), "huge.png is 2049×8: the page takes frames up to 2048"),
                        ((None, None, tests[0], "dis", truth), "goes with two frames"),
                        ((a, None, None, "dis", None), "Upload two frames")):
        with pytest.raises(AppError, match=words):
            client.predict(*(handle_file(str(x)) if isinstance(x, Path) else x for x in args), api_name="/flow")
    # files our readers refuse, each named by its file name in one line (Gradio's image component opened the frames
    # itself, and said so in a paragraph naming its folders)
    (tmp_path / "notes.png").write_bytes(b"not an image")
    (tmp_path / "text.mp4").write_bytes(b"not a video")
    (tmp_path / "junk.flo").write_bytes(b"not a flow file")
    write_flow(tmp_path / "unknown.flo", np.full((96, 128, 2), np.nan, np.float32))  # every vector unknown
    for args, words in (((a, tmp_path / "notes.png", None, "dis", None), "notes.png: unreadable image"),
                        ((None, None, tmp_path / "text.mp4", "dis", None), "text.mp4: cannot open as a video"),
                        ((a, b, None, "dis", tmp_path / "junk.flo"), "junk.flo: wrong tag"),
                        ((a, b, None, "dis", tmp_path / "unknown.flo"), "unknown.flo: no known flow vector")):
        with pytest.raises(AppError, match=words) as err:
            client.predict(*(handle_file(str(x)) if isinstance(x, Path) else x for x in args), api_name="/flow")
        _one_clear_line(str(err.value))


def test_without_a_checkpoint_the_page_says_how_to_make_one(tmp_path):
    app = ActionflowApp(None, device="cpu")
    try:
        c = Client(app.start(), verbose=False)
        with pytest.raises(AppError, match="python train.py"):
            c.predict(handle_file(str(write_mp4(tmp_path / "v.mp4", render("up", 4, 32)))), api_name="/classify")
        # the Flow tab works; its outputs live in the app's folder until it closes
        a, b, _, _ = _shifted_pair(tmp_path)
        c.predict(handle_file(str(a)), handle_file(str(b)), None, "dis", None, api_name="/flow")
        written = list(app.root.glob("out-*/*.flo"))  # ours; Gradio keeps its copy in its cache, under app.root too
        assert written
        os.utime(written[0].parent, (0, 0))  # an old request's folder is swept by the next request
        app._outdir()
        assert not written[0].exists()
    finally:
        app.close()
    assert not app.root.exists()


def test_a_zip_made_on_a_mac_gives_its_frames(tmp_path):
    """Finder's zips hold __MACOSX/ (resource forks named ._*.png) and .DS_Store: the frames alone are extracted."""
    frames = {}
    for i in range(1, 4):
        write_image(tmp_path / "f.png", np.full((8, 8, 3), i, np.uint8))
        frames[f"img_{i:05d}.png"] = (tmp_path / "f.png").read_bytes()
    archive = tmp_path / "clip.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in frames.items():
            zf.writestr(f"clip/{name}", data)
            zf.writestr(f"__MACOSX/clip/._{name}", b"\x00\x05\x16\x07 resource fork")
        zf.writestr("clip/.DS_Store", b"Bud1")
    folder = extract_frames(archive, tmp_path / "out", 10**6)
    assert folder == tmp_path / "out" / "clip"
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == frames
    with zipfile.ZipFile(tmp_path / "hidden.zip", "w") as zf:
        zf.writestr(".img_00001.png", frames["img_00001.png"])
    with pytest.raises(UploadError, match="no image files"):
        extract_frames(tmp_path / "hidden.zip", tmp_path / "out2", 10**6)


@pytest.mark.parametrize("argv, words", [
    (["--max-upload-mb", "inf"], "--max-upload-mb: must be a positive, finite number"),
    (["--max-upload-mb", "nan"], "--max-upload-mb: must be a positive, finite number"),
    (["--port", "99999"], "--port: a port is 1..65535"),
    (["--port", "-5"], "--port: must be at least 1"),
    (["--concurrency", "0"], "--concurrency: must be at least 1"),
    (["--bench-runs", "0"], "--bench-runs: must be at least 1"),
    (["--examples", "no/such/folder"], "--examples: no/such/folder is not a folder"),
])
def test_bad_command_lines_are_argument_errors(argv, words, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["app", *argv])
    assert exit_.value.code == 2 and words in capsys.readouterr().err


def test_what_fails_at_start_is_one_line(demo, tmp_path, monkeypatch, capsys):
    """Weights that do not load, and a video that cannot be benchmarked: the command's error, exit 2."""
    monkeypatch.chdir(tmp_path)  # no runs/ here
    (tmp_path / "raft.pth").write_bytes(b"not weights")
    assert main(["app", "--flow-weights", "raft_small=raft.pth", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("app: error: raft.pth: cannot be read") and err.count("\n") == 1, err
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    assert main(["app", "--ckpt", str(demo[0]), "--bench", "bad.mp4", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("app: error: bad.mp4: cannot open as a video") and "Traceback" not in err, err


def test_newest_best_checkpoint_and_where_it_listens(tmp_path):
    assert find_checkpoint(tmp_path / "runs") is None
    for i, name in enumerate(("a/checkpoints/best-epoch3.ckpt", "b/checkpoints/best-epoch1.ckpt", "b/checkpoints/last.ckpt")):
        path = tmp_path / "runs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        os.utime(path, (1000 + i, 1000 + i))
    assert find_checkpoint(tmp_path / "runs") == tmp_path / "runs/b/checkpoints/best-epoch1.ckpt"
    (tmp_path / "runs/b/checkpoints/best-epoch9.ckpt").symlink_to(tmp_path / "gone.ckpt")  # a dead link is no checkpoint
    assert find_checkpoint(tmp_path / "runs") == tmp_path / "runs/b/checkpoints/best-epoch1.ckpt"
    assert "this machine only" in bind_note("127.0.0.1", 7860)
    assert bind_note("0.0.0.0", 7860).startswith("WARNING") and "other machines" in bind_note("0.0.0.0", 7860)
    import argparse

    from actionflow import app as app_module

    parser = argparse.ArgumentParser()
    app_module.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.host, args.max_upload_mb, args.concurrency) == ("127.0.0.1", 200, 1)


def test_bench_runs(demo, tests):
    app = ActionflowApp(demo[0], device="cpu")
    try:
        result = bench(app, tests[0], runs=1)
    finally:
        app.close()
    assert result["frames"] == 16 and min(result.values()) > 0
    assert result["page_s"] > result["page_classify_s"] + result["page_render_s"]


# --------------------------------------------------------------------------- in a real browser
@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra has it)")
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run installs it)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _open(browser, url: str, tab: str):
    """A fresh page on ``tab``, once its components are there (uploads before that are lost)."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(url, wait_until="networkidle")
    page.get_by_role("tab", name=tab).click()
    page.locator("#af-classify" if tab == "Classify" else "#af-flow-run").wait_for(timeout=60_000)
    return page


def _upload(page, where: str, path: Path) -> None:
    page.locator(f"{where} input[type=file]").set_input_files(str(path))
    page.locator(where).get_by_text(path.name).first.wait_for(timeout=60_000)


def _screenshot(page, tmp_path: Path, name: str) -> None:
    """The tab as a small PNG (256 colours): in tmp_path, and in $ACTIONFLOW_SCREENSHOTS when set (docs/app.png
    is the Classify tab made this way)."""
    from PIL import Image

    shot = tmp_path / f"{name}.png"
    page.screenshot(path=str(shot), full_page=True)
    Image.open(shot).convert("RGB").quantize(colors=128).save(shot, optimize=True)
    if os.environ.get("ACTIONFLOW_SCREENSHOTS"):
        shutil.copy(shot, Path(os.environ["ACTIONFLOW_SCREENSHOTS"]) / f"app_{name}.png")


def test_in_chromium_classify_shows_classify_s_numbers(browser, served, demo, tests, tmp_path, capsys):
    expected = cli_json(demo[0], tests[3], capsys)
    page = _open(browser, served[1], "Classify")
    # a bad upload first: a message in the page, and the page goes on serving
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x20ftypisom" + bytes(300))
    _upload(page, "#af-upload", bad)
    page.click("#af-classify")
    page.get_by_text("broken.mp4: cannot open as a video").first.wait_for(timeout=60_000)
    page.locator("#af-upload button[aria-label='Clear']").first.click()
    _upload(page, "#af-upload", tests[3])
    page.click("#af-classify")
    top = page.locator("#af-top-two_stream tr").first
    top.locator(".af-label").wait_for(timeout=120_000)
    assert top.locator(".af-label").inner_text() == expected["topk"][0]["label"]
    assert float(top.locator(".af-prob").inner_text()) == expected["topk"][0]["prob"]
    for stream, rows in expected["streams"].items():
        assert page.locator(f"#af-top-{stream} .af-label").first.inner_text() == rows[0]["label"]
    page.wait_for_function("() => { const v = document.querySelector('#af-video video'); return v && v.duration > 0 }",
                           timeout=30_000)
    page.wait_for_function("() => { const i = document.querySelector('#af-plot img'); return i && i.naturalWidth > 0 }",
                           timeout=30_000)
    assert tests[3].name in page.locator("#af-details").inner_text()
    _screenshot(page, tmp_path, "classify")
    page.close()


def test_in_chromium_flow_with_ground_truth(browser, served, tmp_path):
    a, b, truth_file, truth = _shifted_pair(tmp_path)
    page = _open(browser, served[1], "Flow")
    _upload(page, "#af-truth", truth_file)
    for i, frame in ((1, a), (2, b)):
        page.locator(f"#af-frame{i} input[type=file]").set_input_files(str(frame))
        page.locator(f"#af-frame{i} img").first.wait_for(timeout=60_000)
    page.click("#af-flow-run")
    page.locator("#af-epe").get_by_text("EPE").wait_for(timeout=60_000)
    assert "pairs/s" in page.locator("#af-flow-time").inner_text()
    page.wait_for_function("() => { const i = document.querySelector('#af-error-map img'); return i && i.naturalWidth > 0 }",
                           timeout=30_000)
    _screenshot(page, tmp_path, "flow")
    page.close()
