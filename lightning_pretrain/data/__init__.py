"""Data: where text comes from, tokenizers, the token-block cache, and the DataModules. Never imports objectives."""

from lightning_pretrain.data.pretrain.corpus import PretrainCorpus
from lightning_pretrain.data.pretrain.sentence_pairs import SentencePairCorpus
from lightning_pretrain.data.pretrain.streaming import StreamingCorpus
from lightning_pretrain.data.finetune.classification import TextClassification
from lightning_pretrain.data.finetune.sft import SFTData
from lightning_pretrain.data.finetune.text_to_text import TextToText

__all__ = ["PretrainCorpus", "SentencePairCorpus", "StreamingCorpus", "TextClassification", "SFTData", "TextToText"]
