"""The model: its architecture, checkpoints, tokenizer, page inputs and the embedding function."""
