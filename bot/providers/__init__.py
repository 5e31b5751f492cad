"""The provider layer: one adapter per vendor over a shared HTTP package; no Discord here."""
