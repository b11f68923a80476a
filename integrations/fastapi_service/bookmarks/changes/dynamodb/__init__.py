"""Changes of the bookmarks table in DynamoDB, next to the audit and lock tables.

Creating a table and scanning items cannot be part of a `TransactWriteItems`, so those changes
are not transactional and are written to be safe to run again. The seed change collects its
write in the `DynamoTransaction`, which commits it together with its audit entry.
"""
