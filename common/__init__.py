"""What the roles share: the store's format, the messages, the model and the embedding function, settings."""
