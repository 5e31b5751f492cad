"""Application services: what a command asks for, in plain values (no Discord objects)."""
