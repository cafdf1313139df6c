"""Who may call what: credentials (bearer tokens stored as hashes, certificate subjects),
roles, the programmes each credential may touch, and the one table saying which role every
RPC needs (docs/security.md, decision 22). No gRPC here: ledger/api/auth.py applies it."""
