"""The domain: aggregates, their events and the rules they enforce.

Nothing here imports gRPC or SQL. Amounts are Python ints; times are aware datetimes.
"""
