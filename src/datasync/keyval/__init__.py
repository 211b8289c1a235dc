"""Key-value backends: the embedded LMDB store (``datasync.keyval.lmdb``)."""
