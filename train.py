"""Fine-tune a BERT recommender: `accelerate launch train.py --config configs/movielens.yaml [--flag value ...]`.

Every setting of the YAML file can be given as a flag of the same name; flags win. `python train.py --help` lists
them all.
"""

from __future__ import annotations

from recsys_bert.arguments import parse_args
from recsys_bert.cli import quiet_libraries, run_main


def main() -> None:
    model_args, data_args, training_args = parse_args()
    quiet_libraries()
    from recsys_bert.trainer import train

    train(model_args, data_args, training_args)


if __name__ == "__main__":
    run_main(main)
