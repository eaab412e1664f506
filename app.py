"""A demo page over a trained recsys-bert model (Gradio); `python app.py --help` lists every option.

python app.py                                   # runs/movielens, the model `make demo` trains
python app.py --model me/recsys-bert-scientific --config configs/scientific.yaml --port 7861
"""

from __future__ import annotations

from recsys_bert.cli import quiet_libraries, run_main


def main() -> None:
    quiet_libraries()
    from recsys_bert.demo import main as demo

    demo()


if __name__ == "__main__":
    run_main(main)
