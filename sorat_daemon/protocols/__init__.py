"""Pure translation of each client protocol, no I/O: a client's body checked and turned into sorat's
terms, and the agent's answers rendered back into that protocol's chunks and objects. Nothing here
knows HTTP, the agent or the providers.
"""
