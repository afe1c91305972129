"""Backends: one small class per model family (see base.Backend for the contract)."""
