"""Retouch: a self-hosted Discord bot that edits images with GPT Image models (see ARCHITECTURE.md)."""
