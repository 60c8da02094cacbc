"""The data layer: real English corpora, a byte-level BPE tokenizer, token datasets.

`corpora` names the texts, `tokenizer` trains and wraps BPE, `build` turns a corpus into
train/val token arrays, `tokens` is the `dataset.tokens` source a manifest refers to.
"""
