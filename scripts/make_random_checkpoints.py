"""Write randomly initialised checkpoints, in each published model's original format, where a config expects them.

    python scripts/make_random_checkpoints.py configs/paper-tiny.yaml --sizes tiny
    python scripts/make_random_checkpoints.py COPY_OF_PAPER_YAML --sizes published

``tiny`` gives the small text-model folders and QuiltNet layout ``configs/paper-tiny.yaml`` is
written for; ``published`` the real architectures (BERT-base text models, QuiltNet-B-32), for
speed and memory checks of ``configs/paper.yaml`` before the real weights are there. Existing
files are never overwritten (see m3bind.models.adapters.random_checkpoints).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from m3bind.config import load_config
from m3bind.models.adapters.random_checkpoints import PUBLISHED, TINY, write_random_checkpoints

SIZES = {"tiny": TINY, "published": PUBLISHED}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="experiment config whose checkpoint paths to fill")
    parser.add_argument("--sizes", choices=sorted(SIZES), default="tiny",
                        help="sizes of the text-model folders and open_clip models (default: tiny)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for path in write_random_checkpoints(load_config(args.config), args.config, SIZES[args.sizes], args.seed):
        print(path)


if __name__ == "__main__":
    main()
