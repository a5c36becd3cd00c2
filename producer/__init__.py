"""The producer: turns a list of DataSpecs into a job and sends its batches; reports where jobs stand."""
