"""Meshes, sharding rules, multi-host start-up and the shard_map pipeline over chunk groups."""
