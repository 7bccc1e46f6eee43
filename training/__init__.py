"""Training question-askers (SFT, reward models, DPO, multi-turn PPO on the environment): see issue 7."""
