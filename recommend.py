"""Rank items for users with a trained recsys-bert model; `python recommend.py --help` lists every option.

python recommend.py --model runs/movielens --config configs/movielens.yaml --split test --output recs.parquet
python recommend.py --model runs/mine --items items.csv --users new_users.jsonl --output recs.csv
accelerate launch --num_processes 4 recommend.py --model runs/sci --config configs/scientific.yaml --output r.jsonl
"""

from __future__ import annotations

from recsys_bert.arguments import parse_recommend_args
from recsys_bert.cli import quiet_libraries, run_main


def main() -> None:
    data_args, recommend_args = parse_recommend_args()
    quiet_libraries()
    from recsys_bert.inference import recommend

    recommend(data_args, recommend_args)


if __name__ == "__main__":
    run_main(main)
