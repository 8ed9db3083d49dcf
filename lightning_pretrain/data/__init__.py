"""Data: where text comes from, tokenizers, the token-block cache, and the DataModules. Never imports objectives."""

from lightning_pretrain.data.finetune.classification import TextClassification
from lightning_pretrain.data.finetune.multiple_choice import MultipleChoiceData
from lightning_pretrain.data.finetune.squad import SquadData
from lightning_pretrain.data.finetune.token_tags import TokenTagging
from lightning_pretrain.data.generative.sft import SFTData
from lightning_pretrain.data.generative.text_to_text import TextToText
from lightning_pretrain.data.pretrain.corpus import PretrainCorpus
from lightning_pretrain.data.pretrain.sentence_pairs import SentencePairCorpus
from lightning_pretrain.data.pretrain.streaming import StreamingCorpus

__all__ = [
    "MultipleChoiceData",
    "PretrainCorpus",
    "SentencePairCorpus",
    "SFTData",
    "SquadData",
    "StreamingCorpus",
    "TextClassification",
    "TextToText",
    "TokenTagging",
]
