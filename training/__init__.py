"""The periodic trainer (SFT, GRPO with constrained reward shaping, model registry): a later milestone."""
