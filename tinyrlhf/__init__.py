"""Tiny-HPC-RLHF: SFT, reward modelling and PPO on one consumer GPU, and the quantization tax of the reward model."""

from . import quiet

quiet.install()
