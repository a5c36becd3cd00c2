"""`comix-embed diagnose Z`: check a store against its contract (docs/store.md), read only.

The users' checking scripts printed statistics of the first rows; on a store their tool wrote in
random order, that cannot tell "not written yet" from "lost". This tool checks what the store claims
against what it holds, one line per check (OK, WARN or FAIL), then a verdict. Each family of checks
is a module that says what it checks:

- `layout.py`: layout (the arrays against the schema) and zarr-vs-xarray;
- `manifests.py`: manifests (against themselves and their job files) and manifest-rows;
- `retries.py`: retries (retry manifests against their rounds and the store);
- `page_ids.py`: page-ids (unique, each in the row its job file gave it);
- `values.py`: values (finite, non-zero, zero where failed) and panel-masks;
- `leftovers.py`: leftovers (temporary files, moved-aside manifests, unfinished batches);
- `audit.py`: audit (the audit log against the store).

`load.py` reads the store once, `facts.py` reads its rows in one pass, `report.py` words the
results and `command.py` runs them in order.

Exit status 0 when no check FAILs (warnings allowed), 1 otherwise (a store whose root metadata,
manifest folder or job files cannot even be read included), 2 when there is no store.
Nothing is written: the store is opened read only, and whether a writer runs is read from
/proc/locks rather than by taking its lock.
"""
