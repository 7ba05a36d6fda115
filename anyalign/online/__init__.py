"""Online and mixed DPO: responses sampled from the policy during ``fit``, scored by a pluggable reward
(``rewards.py``), ranked and trained on with the offline pairs (``sampler.py``; ``data.online_fraction``)."""
from .rewards import ExactMatch, Judge, Reward, RewardModel, TokenF1, token_f1
from .sampler import OnlineSampler, OnlineStats, build_reward

__all__ = ["ExactMatch", "Judge", "OnlineSampler", "OnlineStats", "Reward", "RewardModel", "TokenF1", "build_reward",
           "token_f1"]
