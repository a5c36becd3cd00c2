"""The users' inputs: list files, DataSpecs, the pages they describe and where their images are."""
