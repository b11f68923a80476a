"""Changes of the bookmarks table in the SQLite database that also contains the audit log.

Each change is transactional: it receives the connection of the transaction that also writes
its audit entry, so a change and its APPLIED entry commit together or not at all.
"""
