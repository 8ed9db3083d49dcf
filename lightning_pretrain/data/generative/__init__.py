"""Data for generative fine-tuning: source/target pairs (text-to-text) and prompt/completion or chat data (SFT), on
the fine-tuning base of data/finetune/base.py."""
