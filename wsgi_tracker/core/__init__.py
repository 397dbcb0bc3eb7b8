"""The core: the types every layer exchanges, the swarm store, the announce policy, counters.

It imports no transport, server, sync or stats module (the import contract in
pyproject.toml says so), so both protocols and every process share it as it is.
"""
