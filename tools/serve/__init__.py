"""`comix-embed serve`: a small read-only web application over one or more stores (see command.py)."""
