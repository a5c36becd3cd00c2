"""The writer: the one process that appends batch results to the store, in order, and acknowledges them."""
