"""Dataset evaluation of a tokenizer: streaming metrics and reports."""
