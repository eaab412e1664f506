"""The demo app (app.py): a Gradio page over a trained model to try it by hand.

A person searches the catalogue by title and adds items to a history (or types a free-text item: cold start), and
gets the top-K with scores, probabilities and "because you liked …" (explanations by deletion), optionally with the
history excluded and diversified by MMR. Everything runs offline: a theme of system fonts (Gradio's default pulls
Google web fonts), no analytics. Besides the page, two API endpoints for `gradio_client`: `/recommend` and `/search`.

    python app.py --model runs/movielens           # the catalogue from the run folder's config.yaml
    python app.py --model me/recsys-bert --items items.csv --port 7861
"""

from __future__ import annotations

import html
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read when gradio is imported

import gradio as gr  # noqa: E402
import torch  # noqa: E402

from recsys_bert.arguments import DataArguments, parse_settings  # noqa: E402
from recsys_bert.recommender import Recommender  # noqa: E402
from recsys_bert.utils import InputError  # noqa: E402

DEFAULT_MODEL = "runs/movielens"
MAX_TOP_K = 50
SEARCH_LIMIT = 8
EXPLAIN = 2  # history items shown per recommendation
# system fonts only: the default theme's Google fonts make the page hang where the internet can't be reached
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
CSS = """
#recommendations ol { margin: 0; padding-left: 2.2em; }
#recommendations li { margin: 0 0 .7em 0; }
#recommendations .rec-text { font-weight: 600; }
#recommendations .rec-numbers { font-size: .85em; opacity: .75; font-variant-numeric: tabular-nums; }
#recommendations .rec-because { font-size: .9em; }
#recommendations .rec-because b { display: inline-block; max-width: 22em; overflow: hidden; text-overflow: ellipsis;
  white-space: nowrap; vertical-align: bottom; }
#recommendations .hint { opacity: .7; }
"""


@dataclass
class AppArguments:
    model: str = field(
        default=DEFAULT_MODEL,
        metadata={"help": "A train.py output folder or a Hub id of a trained recsys-bert model (`make demo` trains "
                  "runs/movielens)."},
    )  # fmt: skip
    host: str | None = field(
        default=None, metadata={"help": "Address to serve on (default: $GRADIO_SERVER_NAME, else 127.0.0.1)."}
    )
    port: int | None = field(
        default=None, metadata={"help": "Port to serve on (default: $GRADIO_SERVER_PORT, else 7860 or the next free)."}
    )


def parse_app_args(args: list[str] | None = None) -> tuple[DataArguments | None, AppArguments]:
    """app.py's settings: the model, where to serve, and optionally the catalogue (`--config FILE.yaml`, or
    recommend.py's data flags such as `--items FILE`); `None` for the catalogue = the run folder's config.yaml."""
    description = "A demo page over a trained recsys-bert model."
    data_args, app_args = parse_settings(args, (DataArguments, AppArguments), description)
    return (None if data_args == DataArguments() else data_args), app_args


def load_recommender(model: str, data_args: DataArguments | None = None) -> Recommender:
    """The model with its catalogue; where `model` is no folder here, an error saying how to make one."""
    if Path(model).exists():
        return Recommender.from_pretrained(model, data_args)
    if model == DEFAULT_MODEL:
        raise NoModel(f"{model}: no model yet: `make demo` trains it, or give --model FOLDER_OR_HUB_ID")
    try:  # a Hub id
        return Recommender.from_pretrained(model, data_args)
    except InputError as err:
        raise NoModel(f"{err}; no folder {model} here either (`make demo` trains runs/movielens)") from None


class NoModel(InputError):
    """No model where app.py was pointed (exit code 1)."""


# ---------------------------------------------------------------- what the page shows


def _label(recommender: Recommender, entry: str) -> str:
    """A history entry's text: the catalogue item's, or the free text itself."""
    index = recommender.index_of.get(entry)
    return entry if index is None else recommender.texts[index]


def _history_update(recommender: Recommender, history: list[str]):
    return gr.update(choices=[(_label(recommender, entry), entry) for entry in history], value=history)


def render(recommendations: list[dict]) -> str:
    """The top-K as HTML: text, score, probability and the history items that drove each."""
    items = []
    for entry in recommendations:
        because = [
            f'<b title="{html.escape(reason["text"])}">{html.escape(reason["text"])}</b> ({reason["share"]:.0%})'
            for reason in entry.get("because", [])
            if reason["share"] > 0
        ]
        items.append(
            f'<li><span class="rec-text">{html.escape(entry["text"])}</span><br>'
            f'<span class="rec-numbers">score {entry["score"]:.3f} · probability {entry["probability"]:.2%}</span>'
            + (f'<br><span class="rec-because">because you liked {" and ".join(because)}</span>' if because else "")
            + "</li>"
        )
    return "<ol>" + "".join(items) + "</ol>"


HINT = '<p class="hint">Search for items you liked and add them to the history to see what comes next.</p>'


def build_app(recommender: Recommender) -> gr.Blocks:
    """The demo page over `recommender`; launch it with `launch` (theme and CSS are launch settings in Gradio 6)."""

    def recommend(
        history: list[str], top_k: int = 10, exclude_history: bool = True, diversity_lambda: float = 1.0
    ) -> list[dict]:
        """The top_k items for a history (item ids or texts, oldest first; any other text is a new item), best first:
        item_id, text, score (logit), probability (softmax over the catalogue) and `because`: the two history items
        that drove it (item_id, text, drop of the score without it, share of the drops). MMR re-ranks where
        diversity_lambda < 1 (1 = the plain top-K)."""
        if not history:
            return []
        [entries] = recommender.recommend(
            [list(history)],
            top_k=int(top_k),
            exclude_history=bool(exclude_history),
            diversify="mmr" if diversity_lambda < 1 else None,
            diversity_lambda=float(diversity_lambda),
            explain=EXPLAIN,
        )
        return entries

    def search(query: str) -> list[tuple[str, str]]:
        """Catalogue items whose text holds every word of the query: (item_id, text), closest first."""
        return recommender.search(query, limit=SEARCH_LIMIT)

    def show(history, top_k, exclude_history, diversity_lambda) -> str:
        return render(recommend(history, top_k, exclude_history, diversity_lambda)) if history else HINT

    def find(query):
        return gr.update(choices=[(text, item) for item, text in search(query)], value=None)

    def add(history, entry):
        history = list(history or [])
        entry = (entry or "").strip()
        if entry and entry not in history:
            history.append(entry)
        return _history_update(recommender, history)

    name = getattr(recommender.model.config, "name_or_path", "") or "a recsys-bert model"
    with gr.Blocks(title="recsys-bert") as app:
        gr.Markdown(
            f"## recsys-bert\n{html.escape(str(name))}, {len(recommender):,} items. Add what you liked to the "
            "history; the model ranks the whole catalogue for it."
        )
        with gr.Row():
            with gr.Column(scale=2):
                query = gr.Textbox(label="Search the catalogue", placeholder="a title, e.g. toy story")
                matches = gr.Radio(label="Matches: click one to add it", choices=[], elem_id="matches")
                free_text = gr.Button("Add the search text as a new item", size="sm")
                history = gr.Dropdown(
                    label="History, oldest first (× removes an item)", choices=[], value=[], multiselect=True,
                    elem_id="history",
                )  # fmt: skip
                clear = gr.Button("Clear the history", size="sm")
                most = min(MAX_TOP_K, len(recommender))
                top_k = gr.Slider(1, most, value=min(10, most), step=1, label="How many")
                exclude_history = gr.Checkbox(value=True, label="Leave out items of the history")
                diversity_lambda = gr.Slider(
                    0, 1, value=1, step=0.05, label="Diversity λ (MMR: 1 = off, lower = more varied)"
                )
                go = gr.Button("Recommend", variant="primary", elem_id="recommend")
            with gr.Column(scale=3):
                gr.Markdown("### Recommended")
                shown = gr.HTML(HINT, elem_id="recommendations")
        private = {"api_visibility": "private"}
        query.change(find, query, matches, **private)
        matches.input(add, [history, matches], history, **private).then(lambda: None, None, matches, **private)
        free_text.click(add, [history, query], history, **private)
        clear.click(lambda: _history_update(recommender, []), None, history, **private)
        settings = [history, top_k, exclude_history, diversity_lambda]
        gr.on(
            [go.click, history.change, top_k.release, exclude_history.input, diversity_lambda.release],
            show, settings, shown, trigger_mode="always_last", **private,
        )  # fmt: skip
        gr.api(recommend, api_name="recommend")
        gr.api(search, api_name="search")
    return app


def launch(app: gr.Blocks, host: str | None = None, port: int | None = None, **kwargs):
    """Serves `app` with the offline theme; `kwargs` go to `gr.Blocks.launch` (e.g. `prevent_thread_lock=True`)."""
    return app.launch(server_name=host, server_port=port, theme=THEME, css=CSS, **kwargs)


def main(args: list[str] | None = None) -> None:
    data_args, app_args = parse_app_args(args)
    try:
        recommender = load_recommender(app_args.model, data_args)
    except NoModel as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    # a request is a few small products (one user, a few history items): one thread answers it in milliseconds,
    # where two threads spin against each other on busy cores (0.4 s a request on a shared 2-core machine)
    torch.set_num_threads(1)
    launch(build_app(recommender), app_args.host, app_args.port)
