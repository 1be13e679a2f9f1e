"""Cryptographic core of mra-gateway: keys, DSSE envelopes, RFC 6962/9162 Merkle logs,
C2SP checkpoints and X.509 material for mutual TLS.

Pure functions and small types: no network, no database. May import only the generated
protobuf package (``mra``).
"""
