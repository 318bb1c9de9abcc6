"""hfpipe: fine-tune, pretrain and evaluate Hugging Face transformer models from YAML recipes."""

__version__ = "0.1.0"
