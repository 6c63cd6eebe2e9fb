"""Training the intent model: SFT (sft.py); feedback episodes and the periodic trainer
(trainer.py); the judge, the reward model and GRPO with constrained reward shaping (judge.py,
reward_model.py, grpo.py, rl.py)."""
