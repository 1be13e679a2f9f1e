"""The mra-gateway service: config, storage, issuer log, partner exchange, local APIs, CLI.

Dependencies point one way: ``gateway`` imports ``registry`` and ``crypto``, never the reverse.
"""
