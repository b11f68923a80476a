"""Changes of the bookmarks collection in the MongoDB database that also contains the audit log.

The first change creates the collection and its index outside a transaction, so it runs the
same on a standalone server, and it is written to be safe to run again. The others take
the transaction's `session`, which is None when the driver runs with transactions off (on a
standalone server); the driver then writes a STARTED audit entry first instead.
"""
