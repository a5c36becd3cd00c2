"""Stores made by generate_embeddings_zarr_v2 converted into ours: read, converted, committed (`import-v2`), cached for the read commands."""
