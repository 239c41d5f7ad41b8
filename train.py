"""Train one model, or sweep many with `-m`: `python train.py -m hidden=64,100,256 weight_decay=0.1,0.5`."""

import sys

import hydra
from omegaconf import DictConfig

from modadd.config import ConfigError, preflight


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from modadd.job import train  # heavy imports (torch, Lightning, W&B) after the preflight

    return train(cfg)


if __name__ == "__main__":
    try:
        preflight(sys.argv[1:])  # every job's config, before any directory or W&B run exists
    except ConfigError as err:
        sys.exit(f"error: {err}")
    main()
