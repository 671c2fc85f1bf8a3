"""Pure translation of each client protocol, no I/O: a request's JSON into a ``turn.TurnRequest``, the
agent's events into the protocol's chunks, items or blocks, and errors into its shape."""
