"""Meshes, sharding rules and (later) the pipeline schedule."""
