"""The users' tools: commands that make inputs (sample, dataspec, init-checkpoint) or read the store."""
