"""A 2-D map of a store's pages: landmarks laid out by t-SNE, every page placed among them, shown by serve."""
