"""optuna-dashboard rendered in headless Chromium: the FMS figure, note and checkpoints are there.

Needs Debian's Chromium (``apt-get install -y chromium chromium-driver``): without it the test
fails in CI (``CI=true``) and is skipped elsewhere, saying what to install. The dashboard is
served in process on 127.0.0.1 (optuna-dashboard's WSGI app under a threaded wsgiref server);
Chromium loads the study page, the note page and a trial page, and the test reads the DOM
after the page's scripts ran (``--dump-dom`` with a virtual-time budget).

Screenshots are saved under the test's temporary folder, and also under the folder named by
``OPTUNA_FMS_SCREENSHOTS`` when that is set. To refresh ``docs/images`` from a real study (the
demo's), run this file as a script::

    python tests/test_dashboard_browser.py sqlite:///fms.db artifacts fms-digits docs/images
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import os
from pathlib import Path
import shutil
from socketserver import ThreadingMixIn
import subprocess
import sys
import tempfile
import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler
from wsgiref.simple_server import WSGIServer
from wsgiref.simple_server import make_server

import pytest


INSTALL = "apt-get install -y chromium chromium-driver"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path is not None:
            return path
    return None


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve(storage: Any, artifact_store: Any) -> Iterator[str]:
    """Serve optuna-dashboard on a free loopback port; yield its base URL."""
    import optuna_dashboard

    app = optuna_dashboard.wsgi(storage, artifact_store=artifact_store)
    server = make_server(
        "127.0.0.1", 0, app, server_class=_ThreadingServer, handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def chromium(url: str, *args: str, budget_ms: int = 15000) -> str:
    """Run headless Chromium on ``url`` with a fresh profile; return its stdout."""
    exe = chromium_path()
    assert exe is not None
    with tempfile.TemporaryDirectory(prefix="fms-chromium-") as profile:
        done = subprocess.run(
            [
                exe,
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--virtual-time-budget={budget_ms}",
                *args,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    return done.stdout


def dom(url: str, *expected: str) -> str:
    """The rendered DOM of ``url``; retried with a longer budget until ``expected`` are in it."""
    text = ""
    for budget in (10000, 30000):
        text = chromium(url, "--dump-dom", budget_ms=budget)
        if all(e in text for e in expected):
            break
    return text


def screenshot(url: str, path: Path, size: str = "1400,1700") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    chromium(url, f"--screenshot={path}", f"--window-size={size}")
    assert path.is_file() and path.stat().st_size > 10_000, f"no screenshot of {url}"


def save_screenshots(base: str, study_id: int, trial_number: int, folder: Path) -> list[Path]:
    """Screenshots of the study page (figure), the note and a trial page (artifacts)."""
    pages = {
        "dashboard-study.png": (f"{base}/dashboard/studies/{study_id}", "1400,1700"),
        "dashboard-note.png": (f"{base}/dashboard/studies/{study_id}/note", "1400,1000"),
        "dashboard-trial.png": (
            f"{base}/dashboard/studies/{study_id}/trials?numbers={trial_number}",
            "1400,1300",
        ),
    }
    paths = []
    for name, (url, size) in pages.items():
        screenshot(url, folder / name, size)
        paths.append(folder / name)
    return paths


@pytest.fixture
def need_chromium() -> None:
    if chromium_path() is None:
        reason = f"Chromium is not installed; install it with: {INSTALL}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)


def test_dashboard_pages_render_fms_figure_note_and_checkpoints(
    tmp_path: Path, need_chromium: None
) -> None:
    pytest.importorskip("optuna_dashboard")
    from test_dashboard import make_study

    from optuna_fms._dashboard import GRAPH_OBJECT_ID
    from optuna_fms._dashboard import DashboardReport

    storage, store, study = make_study(tmp_path)
    DashboardReport(top=3).write(study)
    sid = study._study_id
    with serve(storage, store) as base:
        # Study page: the figure is drawn by plotly.js, with our traces in its legend.
        page = dom(f"{base}/dashboard/studies/{sid}", "paused, then continued")
        assert f'id="user-defined-plot:{GRAPH_OBJECT_ID}"' in page
        assert "main-svg" in page
        for text in ("FMS learning curves", "trial 1→3", "paused, then continued", "paused"):
            assert text in page, text
        # Note page: the markdown note rendered.
        page = dom(f"{base}/dashboard/studies/{sid}/note", "Epochs saved")
        for text in ("Forecasting Model Search", "Trials started", "Epochs saved", "continued"):
            assert text in page, text
        # Trial page of the paused trial: FMS's attributes and its checkpoints as artifacts.
        page = dom(
            f"{base}/dashboard/studies/{sid}/trials?numbers=1", "trial-1-step-3.safetensors"
        )
        for text in (
            "fms:paused",
            "fms:forecast",
            "fms:checkpoints",
            "trial-1-step-2.safetensors",
            "trial-1-step-3.safetensors",
        ):
            assert text in page, text
        # The continuation's page says which trial it continues.
        page = dom(f"{base}/dashboard/studies/{sid}/trials?numbers=3", "fms:continues")
        assert "fms:continues" in page
        assert "trial-3-step-7.safetensors" in page

        shots = save_screenshots(base, sid, 1, tmp_path / "screenshots")
    target = os.environ.get("OPTUNA_FMS_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for shot in shots:
            shutil.copy(shot, Path(target) / shot.name)


def _main(argv: list[str]) -> None:
    """Screenshots of a stored study: STORAGE ARTIFACT_DIR STUDY_NAME OUT_DIR [TRIAL_NUMBER]."""
    import optuna
    from optuna.artifacts import FileSystemArtifactStore

    from optuna_fms import _attrs

    storage_url, artifact_dir, study_name, out = argv[:4]
    storage = optuna.storages.get_storage(storage_url)
    study = optuna.load_study(study_name=study_name, storage=storage)
    if len(argv) > 4:
        number = int(argv[4])
    else:  # The latest paused trial with checkpoints, else the last trial.
        paused = [t for t in study.trials if _attrs.PAUSED in t.user_attrs]
        number = (paused or study.trials)[-1].number
    with serve(storage, FileSystemArtifactStore(artifact_dir)) as base:
        for path in save_screenshots(base, study._study_id, number, Path(out)):
            print(path)


if __name__ == "__main__":
    _main(sys.argv[1:])
