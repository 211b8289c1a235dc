"""The embedded backend: a revisioned key-value store over LMDB files."""

from datasync.keyval.lmdb.store import (DeleteResult, Listing, Registration,
                                        Store, Txn)

__all__ = ["Store", "Txn", "Registration", "DeleteResult", "Listing"]
