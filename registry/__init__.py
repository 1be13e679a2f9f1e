"""Recognition registry: administrations, customs unions, programmes and arrangements, and
the resolver that answers "does R recognise an AEO of type T issued by I on date D (mode M)?".

A pure domain package: no gRPC, no database, imports nothing else of ours.
"""
