"""Distributed NeRF numerical core."""
