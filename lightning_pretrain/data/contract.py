"""`DataContract`: everything a model needs to know about its data, published by the DataModule as one value.

Data flows one way: once the data module exists, the CLI calls `publish(data)` and passes the contract to the model's
constructor (`data=`), before the model is built. Publishing is the one explicit step in which a DataModule does the
work its facts take (load or train the tokenizer, measure tokenized splits: cached, and reused by `prepare_data`);
`contract` is then a plain value. No model or objective ever reads attributes of a data module.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100  # a label no loss or metric counts: the convention of every DataModule, loss and HF model


@dataclass(frozen=True)
class DataContract:
    """What a DataModule publishes for the model (fields that do not apply to a kind of data stay None)."""

    tokenizer: PreTrainedTokenizerBase  # the tokenizer the data was (or will be) encoded with
    seq_len: int | None = None  # tokens per packed block or per sentence pair (pretraining)
    max_length: int | None = None  # longest tokenized example / source / packed row, specials included (fine-tuning)
    max_target_length: int | None = None  # longest tokenized target (text-to-text)
    # split ('val', 'test', 'predict') -> its longest prompt, which evaluation or predict continues (SFT)
    longest_prompts: dict[str, int] | None = None
    task: str | None = None  # 'nsp' / 'sop' (sentence pairs); 'classification' / 'regression' / 'text_to_text' /
    # 'sft' (fine-tuning)
    label_names: tuple[str, ...] | None = None  # class names in id order (classification)
    # False: a packed block's documents do not attend to each other; batches carry their `position_ids`
    cross_document_attention: bool = True

    @property
    def longest(self) -> int | None:
        """The longest input the model will see from this data (checked against the model's positions)."""
        return self.seq_len if self.seq_len is not None else self.max_length


def publish(datamodule) -> DataContract:
    """The contract of `datamodule`, made known once by its `publish()` (a DataModule whose contract takes no work
    may offer just a `contract`); what the CLI link hands the model."""
    step = getattr(datamodule, "publish", None)
    return step() if callable(step) else datamodule.contract
