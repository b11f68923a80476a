"""Changes of the job queue table, in the SQLite database that also contains the audit log.

They are transactional: each receives the connection of the transaction that also writes its
audit entry, so a change and its APPLIED entry commit together or not at all.
"""
