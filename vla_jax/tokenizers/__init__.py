"""Action tokenizers (binning, FAST) and the text tokenizer."""
