"""`--data.tokenizer unigram`: a SentencePiece-style Unigram tokenizer trained on the corpus, cached, saved and
reloaded by transformers unchanged."""

from conftest import ENGLISH
from transformers import AutoTokenizer

from lightning_pretrain.data import PretrainCorpus
from lightning_pretrain.data import tokenizers as toks


def test_unigram_layout_and_round_trip(tmp_path):
    tok = toks.train_unigram(ENGLISH * 30, 300)
    assert 100 < len(tok) <= 300
    # T5's special ids first, so a T5 config's defaults (pad 0, eos 1, unk 2) name the right tokens
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.mask_token == "<mask>" and tok.cls_token == "<s>" and tok.sep_token == "</s>"
    pieces = tok.tokenize("The quick brown fox jumps")
    assert pieces[0].startswith("▁") and "".join(pieces).replace("▁", " ").strip() == "The quick brown fox jumps"
    text = "Language models learn the statistics of text."
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text
    # whitespace runs collapse as in SentencePiece
    assert tok("a  \n b", add_special_tokens=False).input_ids == tok("a b", add_special_tokens=False).input_ids
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text).input_ids == tok(text).input_ids and len(again) == len(tok)


def test_unigram_is_a_datamodule_family_and_cached(tiny_corpus):
    def make():
        dm = PretrainCorpus(
            source=str(tiny_corpus),
            tokenizer="unigram",
            vocab_size=400,
            seq_len=32,
            batch_size=4,
            cache_dir=str(tiny_corpus.parent / "cache"),
        )
        return dm

    first = make()
    tok = first.tokenizer
    assert type(tok).__name__ in {"PreTrainedTokenizerFast", "TokenizersBackend"} and len(tok) <= 400
    assert '"Unigram"' in tok.backend_tokenizer.to_str()
    entries = list((tiny_corpus.parent / "cache" / "tokenizers").iterdir())
    second = make()
    assert second.tokenizer.get_vocab() == tok.get_vocab()
    assert list((tiny_corpus.parent / "cache" / "tokenizers").iterdir()) == entries  # reused, not retrained
    assert toks.fingerprint(tok) != toks.fingerprint(toks.train_bpe(ENGLISH * 30, 400))
    first.prepare_data()
    first.setup("fit")
    assert first.train_blocks.max() < len(tok) and (first.train_blocks == tok.eos_token_id).any()  # </s> separates
