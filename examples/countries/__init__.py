"""A countries catalogue that a real service could keep in SQLite, built from pycountry.

`pipeline.yaml` applies nine changes in two stages to one SQLite database file, which contains
both the application's tables and the flamingock audit log (tables `flamingock_audit` and
`flamingock_lock`), so that every transactional change commits together with its audit entry.
Run it from the repository root, which the `flamingock` command puts on `sys.path`:

    flamingock run --store sqlite:///app.db --changes examples/countries/pipeline.yaml
"""
