"""Snapshots of a growing store: its committed prefix at one moment, copied to a folder or to S3.

`source` says which files a snapshot holds and writes its metadata; `destination` puts them in a
folder or an S3 prefix; `command` is `comix-embed snapshot`: incremental, published last.
"""
