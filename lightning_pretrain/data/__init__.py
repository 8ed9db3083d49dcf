"""Data: where text comes from, tokenizers, the token-block cache, and the DataModules. Never imports objectives."""

from lightning_pretrain.data.corpus import PretrainCorpus
from lightning_pretrain.data.sentence_pairs import SentencePairCorpus
from lightning_pretrain.data.streaming import StreamingCorpus
from lightning_pretrain.data.classification import TextClassification
from lightning_pretrain.data.sft import SFTData
from lightning_pretrain.data.text_to_text import TextToText

__all__ = ["PretrainCorpus", "SentencePairCorpus", "StreamingCorpus", "TextClassification", "SFTData", "TextToText"]
