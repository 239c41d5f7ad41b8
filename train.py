"""Train one model, or sweep many with `-m`: `python train.py -m hidden=64,100,256 weight_decay=0.1,0.5`."""

import hydra
from omegaconf import DictConfig

from modadd.job import train


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    return train(cfg)


if __name__ == "__main__":
    main()
