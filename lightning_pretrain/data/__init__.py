"""Data: where text comes from, tokenizers, the token-block cache, and the DataModules. Never imports objectives."""

from lightning_pretrain.data.corpus import PretrainCorpus

__all__ = ["PretrainCorpus"]
