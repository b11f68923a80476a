"""The service's change units, one package per kind of store, since each speaks its own API."""
