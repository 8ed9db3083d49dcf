"""Evaluation: zero-/few-shot tasks through lm-evaluation-harness (`lightning-pretrain-eval`), offline task files in
the Eval Gauntlet layouts, pseudo-log-likelihood for masked LMs, bits per byte of a text, and the during-training
callback (`lightning_pretrain.callbacks.zero_shot.ZeroShot`). lm-eval is imported only when tasks run."""
