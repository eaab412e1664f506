"""The demo app, launched for real: its API gives recommend.py's lists, a headless Chromium drives the page (offline:
no request leaves the machine), and a missing model is one line saying how to make one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
import pytest

from recsys_bert.arguments import parse_args, parse_recommend_args
from recsys_bert.demo import build_app, launch
from recsys_bert.inference import recommend
from recsys_bert.recommender import Recommender
from recsys_bert.trainer import train
from tests.conftest import REPO_ROOT, assert_same_ranking_up_to_ties, reset_accelerate_state, tiny_train_args

CHROMIUM = Path("/usr/bin/chromium")  # Debian's (`make test` installs it); `playwright install` needs the internet
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
# gradio's queue calls pandas options that pandas 3 deprecates
pytestmark = pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning:gradio.queueing")


@pytest.fixture(scope="module")
def trained(generic_files, tiny, tmp_path_factory) -> Path:
    """A tiny model trained for a few steps; its config.yaml names the catalogue."""
    folder = tmp_path_factory.mktemp("trained")
    extra = ("--max_steps", "4", "--finetune_layers", "1", "--projection_dim", "16", "--exclude_history")
    reset_accelerate_state()
    train(*parse_args(tiny_train_args(generic_files, tiny, folder, *extra)))
    return folder


@pytest.fixture(scope="module")
def served(trained):
    """The app over the trained model, serving on a free port of this machine: `(recommender, url)`."""
    reset_accelerate_state()
    recommender = Recommender.from_pretrained(trained, vector_cache=None)
    app = build_app(recommender)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _, url, _ = launch(app, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    yield recommender, url
    app.close()


def _histories(generic_files) -> list[list[str]]:
    """Two users' last 8 items by id, and a cold-start history: a free text and a catalogue item by id."""
    ratings = pd.read_csv(generic_files[1], dtype=str)
    ids = [ratings[ratings.user_id == user].sort_values("timestamp").item_id.tolist()[-8:] for user in ("1", "2")]
    return [*ids, ["A heist film in a Swiss bank (2031). Crime, Thriller", ids[0][-1]]]


@pytest.mark.latest
def test_the_api_gives_the_lists_of_recommend_py(trained, served, generic_files, tmp_path):
    from gradio_client import Client

    recommender, url = served
    histories = _histories(generic_files)
    users = tmp_path / "users.jsonl"
    users.write_text("".join(json.dumps({"user_id": str(i), "history": h}) + "\n" for i, h in enumerate(histories)))
    items, log = generic_files
    reset_accelerate_state()
    recommend(*parse_recommend_args([
        "--model", str(trained), "--items", str(items), "--interactions", str(log), "--text_template",
        "{title}. {genres}", "--users", str(users), "--top_k", "10", "--exclude_history", "--output",
        str(tmp_path / "recs.jsonl"), "--vector_cache", "none",
    ]))  # fmt: skip
    reference = pd.read_json(tmp_path / "recs.jsonl", lines=True, dtype={"user_id": str})
    client = Client(url, verbose=False)
    for history, ids, scores in zip(histories, reference.item_ids, reference.scores):
        entries = client.predict(history, 10, True, 1.0, api_name="/recommend")
        assert_same_ranking_up_to_ties([e["item_id"] for e in entries], [e["score"] for e in entries], ids, scores)
        assert all(len(e["because"]) == 2 and 0 < e["probability"] < 1 for e in entries)
    # MMR below lambda 1 changes the list; search finds catalogue items by words
    diverse = client.predict(histories[0], 10, True, 0.2, api_name="/recommend")
    assert [e["item_id"] for e in diverse] != list(reference.item_ids[0])
    word = recommender.texts[0].split()[0]
    assert [tuple(hit) for hit in client.predict(word, api_name="/search")] == recommender.search(word, limit=8)


@pytest.mark.latest
def test_the_page_in_a_browser_recommends_offline(served, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"no {CHROMIUM} (Debian's chromium package; `make test` installs it where apt-get is, as root)")
    from playwright.sync_api import expect, sync_playwright

    recommender, url = served
    queries = ["toy story", "jumanji"]
    picked = [recommender.search(query)[0] for query in queries]  # (item_id, text): the first match of each
    [expected] = recommender.recommend([[item for item, _ in picked]], top_k=10, exclude_history=True)
    requested = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda request: requested.append(request.url))
            page.on("websocket", lambda socket: requested.append(socket.url))
            page.goto(url)
            for query, (_, text) in zip(queries, picked):
                page.get_by_label("Search the catalogue").fill(query)
                page.locator("#matches label").filter(has_text=text).first.click()
                expect(page.locator("#history")).to_contain_text(text)
            page.get_by_role("button", name="Recommend").click()
            titles = page.locator("#recommendations li .rec-text")
            expect(titles).to_have_text([entry["text"] for entry in expected])  # the two-item history's list
            expect(page.locator("#recommendations li").first).to_contain_text("because you liked")
            page.screenshot(path=tmp_path / "app.png", full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "app.png").stat().st_size > 0
    away = [u for u in requested if urlparse(u).scheme in ("http", "https", "ws", "wss")
            and urlparse(u).hostname not in ("127.0.0.1", "localhost")]  # fmt: skip
    assert requested and not away


def test_no_model_is_one_line_saying_how_to_make_one(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # the default (runs/movielens, absent in an empty folder) and a folder that isn't there, side by side
    runs = [
        subprocess.Popen([sys.executable, str(REPO_ROOT / "app.py"), *args], cwd=tmp_path, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for args in ([], ["--model", "missing/folder"])
    ]  # fmt: skip
    for run, name in zip(runs, ("runs/movielens", "missing/folder")):
        _, stderr = run.communicate(timeout=120)
        assert run.returncode == 1
        [line] = stderr.strip().splitlines()
        assert line.startswith(f"error: {name}") and "`make demo`" in line
