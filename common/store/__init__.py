"""The store as every role reads it: its schema, its readers, the job files, manifests and retries."""
