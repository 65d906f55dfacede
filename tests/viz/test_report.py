"""The HTML report: complete, self-contained, every image decodes, one table row per run; opened in Chromium."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from PIL import Image

from convattn.cli import main
from convattn.viz import write_report

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or "")
                 if p and os.path.exists(p)), None)


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs: list[str] = []
        self.rows = 0
        self.stack: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag == "tr" and a.get("class") == "run":
            self.rows += 1
        if tag in ("script", "link") and (a.get("src") or a.get("href")):
            self.external.append(a.get("src") or a.get("href"))
        if tag not in ("img", "meta", "br", "link", "input"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}> after {self.stack[-3:]}"
        self.stack.pop()


@pytest.fixture(scope="module")
def report(cbam_run, plain_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    return write_report([cbam_run, plain_run], out, count=2)


@pytest.mark.slow
def test_report_complete_and_self_contained(report, cbam_run, plain_run):
    text = report.read_text()
    page = _Page()
    page.feed(text)
    page.close()
    assert page.stack == []  # every element closed
    assert page.rows == 2
    assert page.external == []
    # scatter, curves, and one gallery per run
    assert len(page.imgs) == 4
    for src in page.imgs:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            assert im.size[0] > 100 and im.size[1] > 100
    for run in (cbam_run, plain_run):
        assert run.name in text
    assert re.search(r"<td>cbam</td>", text) and re.search(r"<td>none</td>", text)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian: apt-get install -y chromium)")
def test_report_renders_in_chromium(report, tmp_path):
    probe = ("<script>window.addEventListener('load',function(){var imgs=document.images,ok=0;"
             "for(var i=0;i<imgs.length;i++){if(imgs[i].complete&&imgs[i].naturalWidth>0)ok++;}"
             "var d=document.createElement('div');d.id='probe';"
             "d.textContent='images '+ok+'/'+imgs.length+' rows '+document.querySelectorAll('#runs tr.run').length;"
             "document.body.appendChild(d);});</script></body>")
    page = tmp_path / "probe.html"
    page.write_text(report.read_text().replace("</body>", probe))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=5000", "--dump-dom", page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    m = re.search(r"images (\d+)/(\d+) rows (\d+)", dom)
    assert m, f"probe did not run; chromium printed: {dom[:300]!r}"
    ok, total, rows = map(int, m.groups())
    assert total == 4 and ok == total
    assert rows == 2


@pytest.mark.slow
def test_cli_report(cbam_run, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(cbam_run), "--out", str(out), "--count", "1", "--no-cam"]) == 0
    assert out.is_file() and "wrote" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "x.html")]) == 2
    assert not (tmp_path / "x.html").exists()


def test_unfinished_runs_show_their_status_and_no_accuracy(cbam_run, tmp_path):
    """A diverged run is reported as diverged: no accuracy in the table, none in the plot."""
    import json
    import shutil

    from convattn.viz.report import run_summary

    run = tmp_path / "diverged"
    shutil.copytree(cbam_run, run)
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "finished" and results["test_acc"] is not None
    (run / "results.json").write_text(json.dumps({"status": "diverged", "reason": "loss nan at step 3"}))
    s = run_summary(run, latency=False)
    assert (s["status"], s["test_acc"], s["val_acc"]) == ("diverged", None, None)
    assert run_summary(cbam_run, latency=False)["status"] == "finished"


def test_localization_leaves_an_unfinished_run_s_results_alone(cbam_run, tmp_path):
    """Scoring a diverged run's maps stores nothing in its results.json."""
    import json
    import shutil

    from convattn.eval import localize_run

    run = tmp_path / "run"
    shutil.copytree(cbam_run, run)
    diverged = {"status": "diverged", "reason": "loss nan at step 3"}
    (run / "results.json").write_text(json.dumps(diverged))
    out = localize_run(run, size=8, cam=False)
    assert out["results_json"] is None and out["maps"]
    assert json.loads((run / "results.json").read_text()) == diverged


def test_report_lists_a_run_without_weights_by_its_status(cbam_run, tmp_path):
    """A run that stopped before its first checkpoint is a row with its status, not a crash."""
    import json

    import pytest

    from convattn import ConfigError
    from convattn.viz import write_report

    dead = tmp_path / "dead"
    dead.mkdir()
    (dead / "results.json").write_text(json.dumps({"status": "diverged", "reason": "loss nan at step 2"}))
    page = write_report([cbam_run, dead], tmp_path / "r.html", count=2, cam=False).read_text()
    assert "<td>dead</td>" in page and "<td>diverged</td>" in page
    with pytest.raises(ConfigError, match="none of the runs has weights"):
        write_report([dead], tmp_path / "r2.html")
