# Table of contents of the commit module: applies a batch of puts and
# deletes inside an open LMDB write transaction and encodes the log record
# of the revision.

cdef enum:
    CODE_PUT = 1
    CODE_DELETE = 2
    CODE_DELETE_PREFIX = 3
