"""Auditors' tools: checkpoints, verification of the hash chains, replay, the event stream."""
