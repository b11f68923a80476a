"""Changes of the bookmarks collection in the MongoDB database that also holds the audit log.

Creating a collection or an index cannot run in a transaction on every server version, so
the first change is not transactional and is written to be safe to run again. The others take
the transaction's `session`, which is None when the driver runs with transactions off (on a
standalone server); the driver then writes a STARTED audit entry first instead.
"""
