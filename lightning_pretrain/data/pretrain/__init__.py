"""Pretraining data: token blocks, the cached and streamed corpora, mixtures, sentence pairs, windows."""
